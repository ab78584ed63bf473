//! Shared by the end-to-end tests and the benchmarks: start the real binaries (and
//! Jaeger) on free loopback ports, each with its own data directory and log files, and
//! stop them when dropped.

use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::job_service_client::JobServiceClient;
use baton_proto::v1::{GetJobRequest, Job, ListAgentsRequest};
use std::fs::File;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tonic::transport::Channel;

/// The workspace root: where it was built, unless `BATON_WORKSPACE` names a copy of it
/// (binaries carried to another machine, as bench/gpt2/gpu/run.sh does).
pub fn workspace() -> PathBuf {
    match std::env::var_os("BATON_WORKSPACE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default(),
    }
}

/// A binary of this workspace, built next to the running test or bench executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let mut dir = exe.parent().expect("test binaries live in a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build it first (cargo build --bins)", path.display());
    path
}

/// A tool installed by deploy/install.sh (grpcurl, jaeger) into .tools/bin.
pub fn tool(name: &str) -> PathBuf {
    let path = workspace().join(".tools/bin").join(name);
    assert!(path.exists(), "{} is missing: run deploy/install.sh", path.display());
    path
}

/// PATH with the project's tools first: agents find geckodriver there.
pub fn tools_path() -> String {
    format!("{}:{}", workspace().join(".tools/bin").display(), std::env::var("PATH").unwrap_or_default())
}

/// A loopback port nothing listens on, for a server a test is about to start. Not one the
/// kernel hands out itself: those come from the ephemeral range (32768–60999 by default),
/// which outgoing connections draw their source ports from too, so one could take the port
/// between this check and the server's bind (seen: Jaeger's "address already in use" in
/// CI). Ports come from below that range instead, in turn from a counter (two servers of
/// one test process never get the same one), each checked free.
pub fn free_port() -> u16 {
    static POOL: OnceLock<(u32, u32, u32)> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let &(low, size, offset) = POOL.get_or_init(|| {
        let (low, high) = match ephemeral_ports() {
            Some((first, _)) if first >= 10_000 + 4_096 => (10_000, first),
            Some((_, last)) if last + 4_096 <= 65_535 => (last + 1, 65_536),
            _ => (20_000, 32_768),
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let seed = std::process::id() ^ now.subsec_nanos();
        (low, high - low, seed.wrapping_mul(2_654_435_761) % (high - low))
    });
    for _ in 0..size {
        let port = (low + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % size) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{}", low + size)
}

/// The kernel's ephemeral port range (first, last), from which it draws outgoing
/// connections' source ports and port 0's binds.
fn ephemeral_ports() -> Option<(u32, u32)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut ports = range.split_whitespace().map(|p| p.parse().ok());
    Some((ports.next()??, ports.next()??))
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "baton-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop; its output goes to a log file
/// whose tail is printed when a test fails.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::options().create(true).append(true).open(&log).expect("creating a log file");
        let err = out.try_clone().expect("cloning a log file handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name: name.to_string(), child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (up to 10 s) for a graceful exit.
    pub fn terminate(&mut self) {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exit_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, ...), as `kill -s NAME PID` does.
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -s {name} {} ({})", self.child.id(), self.name);
    }

    /// How the process ended, or None while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (without blocking the runtime) up to `limit` for the process to end.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A channel to a coordinator at `url`.
async fn connect(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("a valid URL")
        .connect()
        .await
        .expect("connecting to the coordinator")
}

/// Polls `check` every 20 ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A coordinator (or several sharing etcd) and its agents on loopback.
pub struct Cluster {
    /// Where clients go: the coordinator, or with several a [`FaultProxy`] in front of them
    /// all that connects to whichever answers (followers forward to the leader).
    pub url: String,
    /// The first coordinator's port.
    pub port: u16,
    /// One per coordinator; `None` while stopped.
    pub coordinators: Vec<Option<Proc>>,
    ports: Vec<u16>,
    /// The clients' proxy in front of several coordinators, alive as long as the cluster.
    _front: Option<FaultProxy>,
    pub agents: Vec<Proc>,
    /// Each coordinator's extra flags (a restart takes them as they are then).
    pub coordinator_args: Vec<Vec<String>>,
    env: Vec<(String, String)>,
    /// Last, so it is removed after the processes have printed their logs (fields drop in order).
    pub dir: TempDir,
}

impl Cluster {
    /// A coordinator with the given extra flags (e.g. `--lease-timeout 1s`) and environment.
    pub async fn start(coordinator_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_several(1, coordinator_args, env).await
    }

    /// `n` coordinators with the same flags (for several: an etcd store), each advertising
    /// its own URL; clients reach them through one front proxy.
    pub async fn start_several(n: usize, coordinator_args: &[&str], env: &[(&str, &str)]) -> Self {
        let args: Vec<String> = coordinator_args.iter().map(|s| s.to_string()).collect();
        Self::start_each(vec![args; n], env).await
    }

    /// One coordinator per entry of `coordinator_args`, each with those flags.
    pub async fn start_each(coordinator_args: Vec<Vec<String>>, env: &[(&str, &str)]) -> Self {
        let n = coordinator_args.len();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let front =
            (n > 1).then(|| FaultProxy::start_any(ports.iter().map(|p| (Ipv4Addr::LOCALHOST, *p).into()).collect()));
        let mut cluster = Self {
            url: front.as_ref().map_or_else(|| format!("http://127.0.0.1:{}", ports[0]), FaultProxy::url),
            port: ports[0],
            coordinators: (0..n).map(|_| None).collect(),
            ports,
            _front: front,
            dir: TempDir::new("cluster"),
            agents: Vec::new(),
            coordinator_args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        for i in 0..n {
            cluster.start_coordinator_at(i).await;
        }
        cluster
    }

    /// Starts (or restarts) the first coordinator on the same port and data directory.
    pub async fn start_coordinator(&mut self) {
        self.start_coordinator_at(0).await;
    }

    /// Starts (or restarts) coordinator `i` on its port; waits until it listens.
    pub async fn start_coordinator_at(&mut self, i: usize) {
        let url = self.coordinator_url(i);
        let mut cmd = Command::new(bin("baton-coordinator"));
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.ports[i]));
        cmd.arg("--advertise-url").arg(&url);
        cmd.arg("--data-dir").arg(self.dir.0.join(format!("data-{i}")));
        cmd.args(&self.coordinator_args[i]).envs(self.env.iter().cloned());
        let name = if self.ports.len() == 1 { "coordinator".to_string() } else { format!("coordinator-{i}") };
        self.coordinators[i] = Some(Proc::spawn(&name, cmd, &self.dir.0));
        eventually(Duration::from_secs(20), "the coordinator to listen", || {
            let url = url.clone();
            async move { tonic::transport::Endpoint::from_shared(url).ok()?.connect().await.ok() }
        })
        .await;
    }

    /// The first coordinator's process.
    pub fn coordinator(&self) -> &Proc {
        self.coordinators[0].as_ref().expect("the coordinator runs")
    }

    pub fn coordinator_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    /// kill -9 of the first coordinator.
    pub fn kill9_coordinator(&mut self) {
        self.kill9_coordinator_at(0);
    }

    pub fn kill9_coordinator_at(&mut self, i: usize) {
        if let Some(c) = self.coordinators[i].as_mut() {
            c.kill9();
        }
        self.coordinators[i] = None;
    }

    /// Which running coordinator holds `etcd`'s leader key; waits up to `within` for one.
    pub async fn wait_leader(&self, etcd: &Etcd, within: Duration) -> usize {
        eventually(within, "a running coordinator to lead", || async {
            let url = etcd.leader_url()?;
            (0..self.coordinators.len()).find(|i| self.coordinators[*i].is_some() && self.coordinator_url(*i) == url)
        })
        .await
    }

    /// The first coordinator's address, e.g. for a [`FaultProxy`] in front of it.
    pub fn addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port).into()
    }

    /// The agent is given every coordinator's URL and finds the leader itself.
    pub fn add_agent(&mut self, name: &str, slots: u32, args: &[&str]) -> usize {
        let urls: Vec<String> = (0..self.ports.len()).map(|i| self.coordinator_url(i)).collect();
        self.add_agent_via(name, slots, args, &urls.join(","))
    }

    /// Like [`Cluster::add_agent`], but the agent reaches the coordinator at `coordinator_url`
    /// (a [`FaultProxy`]'s URL, say).
    pub fn add_agent_via(&mut self, name: &str, slots: u32, args: &[&str], coordinator_url: &str) -> usize {
        let mut cmd = Command::new(bin("baton-agent"));
        cmd.arg("--coordinator").arg(coordinator_url).arg("--name").arg(name).arg("--slots").arg(slots.to_string());
        cmd.env("PATH", tools_path()).args(args).envs(self.env.iter().cloned());
        self.agents.push(Proc::spawn(name, cmd, &self.dir.0));
        self.agents.len() - 1
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.url).await
    }

    /// A client of coordinator `i` itself (not through the front proxy).
    pub async fn jobs_at(&self, i: usize) -> JobServiceClient<Channel> {
        JobServiceClient::new(connect(&self.coordinator_url(i)).await)
    }

    pub async fn jobs(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel().await)
    }

    /// Waits until `n` agents are connected.
    pub async fn wait_agents(&self, n: usize) {
        let admin = self.admin().await;
        eventually(Duration::from_secs(20), &format!("{n} connected agents"), || {
            let mut admin = admin.clone();
            async move {
                let agents = admin.list_agents(baton_proto::v1::ListAgentsRequest {}).await.ok()?.into_inner().agents;
                (agents.iter().filter(|a| a.connected).count() >= n).then_some(())
            }
        })
        .await;
    }

    /// Polls the job (GetJob) until `done` holds, or panics after `within`; returns it.
    pub async fn wait_job(&self, id: &str, within: Duration, what: &str, done: impl Fn(&Job) -> bool) -> Job {
        let client = self.jobs().await;
        let done = &done;
        eventually(within, &format!("job {id} to {what}"), || {
            let mut client = client.clone();
            let id = id.to_string();
            async move {
                let job = client.get_job(GetJobRequest { id }).await.ok()?.into_inner();
                done(&job).then_some(job)
            }
        })
        .await
    }

    /// Waits until the agent named `name` is listed as connected.
    pub async fn wait_agent_connected(&self, name: &str, within: Duration) {
        let admin = self.admin().await;
        eventually(within, &format!("agent {name} to be connected"), || {
            let mut admin = admin.clone();
            async move {
                let agents = admin.list_agents(ListAgentsRequest {}).await.ok()?.into_inner().agents;
                agents.iter().any(|a| a.id == name && a.connected).then_some(())
            }
        })
        .await;
    }

    /// Runs `grpcurl -plaintext FLAGS... ADDR METHOD` against the coordinator, for `args` =
    /// FLAGS... METHOD; returns what it printed (stdout, then stderr), whatever its exit status.
    pub fn grpcurl(&self, args: &[&str]) -> String {
        let (method, flags) = args.split_last().expect("grpcurl needs at least a method");
        let out = Command::new(tool("grpcurl"))
            .arg("-plaintext")
            .args(flags)
            .arg(format!("127.0.0.1:{}", self.port))
            .arg(method)
            .output()
            .expect("running grpcurl");
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// Runs the `baton` CLI against this cluster; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        self.cli_via(&self.url, args, stdin)
    }

    /// Like [`Cluster::cli`], with `--coordinator URL` of your choice.
    pub fn cli_via(&self, url: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        use std::io::Write;
        let mut child = Command::new(bin("baton"))
            .arg("--coordinator")
            .arg(url)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running baton");
        if let Some(input) = stdin {
            child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("writing stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("waiting for baton");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A TCP proxy in front of one address, for partitioning a process from it:
/// [`FaultProxy::cut`] closes every proxied connection and refuses new ones,
/// [`FaultProxy::stall`] keeps connections open but forwards nothing (a silent partition,
/// like iptables DROP: the bytes wait), [`FaultProxy::heal`] ends either.
///
/// It runs on its own runtime thread, so it keeps forwarding while a test blocks its own.
pub struct FaultProxy {
    pub port: u16,
    link: watch::Sender<Link>,
    runtime: Option<tokio::runtime::Runtime>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LinkMode {
    Open,
    Stalled,
    Cut,
}

/// The proxy's state; `cuts` counts cuts, so a connection that outlived one knows it.
#[derive(Clone, Copy, Debug)]
struct Link {
    mode: LinkMode,
    cuts: u64,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> Self {
        Self::start_any(vec![upstream])
    }

    /// A proxy in front of several addresses: each connection goes to the first of them
    /// that accepts it.
    pub fn start_any(upstreams: Vec<SocketAddr>) -> Self {
        let upstreams = Arc::new(upstreams);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("a runtime for the fault proxy");
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port for the fault proxy");
        let port = listener.local_addr().expect("a bound listener has an address").port();
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let (link, _) = watch::channel(Link { mode: LinkMode::Open, cuts: 0 });
        let links = link.subscribe();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            while let Ok((client, _)) = listener.accept().await {
                let at = *links.borrow();
                // While cut, a new connection is accepted and closed at once.
                if at.mode != LinkMode::Cut {
                    tokio::spawn(proxy_connection(client, upstreams.clone(), links.clone(), at.cuts));
                }
            }
        });
        Self { port, link, runtime: Some(runtime) }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every proxied connection (both sides) and refuses new ones until [`FaultProxy::heal`].
    pub fn cut(&self) {
        self.link.send_modify(|l| {
            l.mode = LinkMode::Cut;
            l.cuts += 1;
        });
    }

    /// Stops forwarding in both directions, keeping connections open, until [`FaultProxy::heal`].
    pub fn stall(&self) {
        self.link.send_modify(|l| l.mode = LinkMode::Stalled);
    }

    /// Forwards again (what waited during a stall goes through) and accepts new connections.
    pub fn heal(&self) {
        self.link.send_modify(|l| l.mode = LinkMode::Open);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Not `drop`: dropping a runtime inside a test's async context panics.
            runtime.shutdown_background();
        }
    }
}

async fn proxy_connection(
    client: tokio::net::TcpStream,
    upstreams: Arc<Vec<SocketAddr>>,
    link: watch::Receiver<Link>,
    cuts: u64,
) {
    let mut server = None;
    for upstream in upstreams.iter() {
        if let Ok(connected) = tokio::net::TcpStream::connect(upstream).await {
            server = Some(connected);
            break;
        }
    }
    let Some(server) = server else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut cut = link.clone();
    tokio::select! {
        _ = forward(client_read, server_write, link.clone()) => {}
        _ = forward(server_read, client_write, link) => {}
        _ = cut.wait_for(|l| l.cuts != cuts) => {}
    }
    // Returning drops both connections: each side sees its peer close.
}

/// Copies bytes one way; while the link is not open they wait here (and, once this buffer
/// is full, in the kernel's).
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<Link>) {
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A statement of its own, so the borrow of the link ends before the write.
        let open = link.wait_for(|l| l.mode == LinkMode::Open).await.is_ok();
        if !open || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A real etcd (built by deploy/install.sh) on free loopback ports: one member, or a
/// cluster of several; data in a temp dir, fsync on (etcd's default).
pub struct Etcd {
    /// The client URLs, comma-separated: what `--etcd-endpoints` takes.
    pub endpoint: String,
    members: Vec<EtcdMember>,
    dir: TempDir,
}

struct EtcdMember {
    client_port: u16,
    peer_port: u16,
    proc: Option<Proc>,
}

impl Etcd {
    pub async fn start() -> Self {
        Self::start_members(1).await
    }

    /// A cluster of `n` members.
    pub async fn start_members(n: usize) -> Self {
        let members: Vec<EtcdMember> =
            (0..n).map(|_| EtcdMember { client_port: free_port(), peer_port: free_port(), proc: None }).collect();
        let endpoint =
            members.iter().map(|m| format!("http://127.0.0.1:{}", m.client_port)).collect::<Vec<_>>().join(",");
        let mut etcd = Self { endpoint, members, dir: TempDir::new("etcd") };
        for i in 0..n {
            etcd.members[i].proc = Some(etcd.spawn(i));
        }
        etcd.wait_healthy().await;
        etcd
    }

    fn spawn(&self, i: usize) -> Proc {
        let url = |port: u16| format!("http://127.0.0.1:{port}");
        let m = &self.members[i];
        let (client, peer) = (url(m.client_port), url(m.peer_port));
        let cluster: Vec<String> =
            self.members.iter().enumerate().map(|(j, m)| format!("m{j}={}", url(m.peer_port))).collect();
        let mut cmd = Command::new(tool("etcd"));
        cmd.args(["--name", &format!("m{i}"), "--log-level", "warn"])
            .arg("--data-dir")
            .arg(self.dir.0.join(format!("m{i}")))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"]);
        Proc::spawn(&format!("etcd-m{i}"), cmd, &self.dir.0)
    }

    /// Waits until every running member's /health says healthy (it has a leader).
    pub async fn wait_healthy(&self) {
        for m in self.members.iter().filter(|m| m.proc.is_some()) {
            let health = format!("http://127.0.0.1:{}/health", m.client_port);
            eventually(Duration::from_secs(30), "etcd to be healthy", || {
                let health = health.clone();
                async move { http_get_json(&health).ok().filter(|v| v["health"] == "true") }
            })
            .await;
        }
    }

    /// kill -9 of member `i`.
    pub fn kill9_member(&mut self, i: usize) {
        if let Some(mut proc) = self.members[i].proc.take() {
            proc.kill9();
        }
    }

    /// Starts member `i` again on its data and ports.
    pub fn start_member(&mut self, i: usize) {
        self.members[i].proc = Some(self.spawn(i));
    }

    /// kill -9 of every member.
    pub fn kill9(&mut self) {
        for i in 0..self.members.len() {
            self.kill9_member(i);
        }
    }

    /// kill -9 of every member, then all start again on the same data and ports.
    pub async fn restart(&mut self) {
        self.kill9();
        for i in 0..self.members.len() {
            self.start_member(i);
        }
        self.wait_healthy().await;
    }

    /// The advertise URL of the coordinator that holds the leader key under the default
    /// prefix (read through etcd's JSON gateway), if one does.
    pub fn leader_url(&self) -> Option<String> {
        let body = format!(r#"{{"key":"{}"}}"#, base64(b"/baton/leader"));
        let member = self.members.iter().find(|m| m.proc.is_some())?;
        let url = format!("http://127.0.0.1:{}/v3/kv/range", member.client_port);
        let mut response = ureq::post(url).send(body.as_str()).ok()?;
        let range: serde_json::Value = serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
        let value = unbase64(range["kvs"][0]["value"].as_str()?)?;
        String::from_utf8(value).ok()
    }

    /// The coordinator flags that put its store here.
    pub fn coordinator_args(&self) -> [&str; 4] {
        ["--store", "etcd", "--etcd-endpoints", self.endpoint.as_str()]
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (etcd's JSON gateway speaks it).
fn base64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            let index = ((n >> (18 - 6 * i)) & 63) as usize;
            out.push(if i <= chunk.len() { BASE64[index] as char } else { '=' });
        }
    }
    out
}

fn unbase64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut n, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        n = (n << 6) | BASE64.iter().position(|b| *b == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
            n &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// A Jaeger v2 with in-memory storage on free loopback ports.
pub struct Jaeger {
    otlp_endpoint: String,
    pub query_url: String,
    _proc: Proc,
    _dir: TempDir,
}

impl Jaeger {
    pub async fn start() -> Self {
        let dir = TempDir::new("jaeger");
        let (otlp, otlp_http, query, query_grpc) = (free_port(), free_port(), free_port(), free_port());
        let mut cmd = Command::new(tool("jaeger"));
        cmd.arg("--config").arg(workspace().join("deploy/jaeger/memory.yaml"));
        cmd.env("JAEGER_OTLP_GRPC_PORT", otlp.to_string())
            .env("JAEGER_OTLP_HTTP_PORT", otlp_http.to_string())
            .env("JAEGER_QUERY_PORT", query.to_string())
            .env("JAEGER_QUERY_GRPC_PORT", query_grpc.to_string());
        let proc = Proc::spawn("jaeger", cmd, &dir.0);
        let query_url = format!("http://127.0.0.1:{query}");
        let services = format!("{query_url}/api/services");
        eventually(Duration::from_secs(30), "Jaeger's query API", || {
            let services = services.clone();
            async move { http_get_json(&services).ok() }
        })
        .await;
        Self { otlp_endpoint: format!("http://127.0.0.1:{otlp}"), query_url, _proc: proc, _dir: dir }
    }

    /// Environment for baton processes that export their spans here, in batches sent
    /// every 100 ms (so a test sees them soon).
    pub fn exporter_env(&self) -> [(&str, &str); 2] {
        [("OTEL_EXPORTER_OTLP_ENDPOINT", self.otlp_endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")]
    }

    /// The trace with this id, as Jaeger's HTTP API returns it (`data[0]`), once it
    /// holds a span with each of the `required` operation names.
    pub async fn trace(&self, trace_id: &str, required: &[&str]) -> serde_json::Value {
        let url = format!("{}/api/traces/{trace_id}", self.query_url);
        eventually(Duration::from_secs(30), &format!("trace {trace_id} with spans {required:?} in Jaeger"), || {
            let url = url.clone();
            async move {
                let v = http_get_json(&url).ok()?;
                let trace = v["data"].get(0)?.clone();
                let names: Vec<&str> =
                    trace["spans"].as_array()?.iter().filter_map(|s| s["operationName"].as_str()).collect();
                required.iter().all(|r| names.contains(r)).then_some(())?;
                Some(trace)
            }
        })
        .await
    }
}

/// A real Prometheus (Debian's `prometheus`, which deploy/install.sh installs) on a free
/// loopback port, scraping its targets every second with exemplar storage on; its data in
/// a temp dir.
pub struct Prometheus {
    pub url: String,
    _proc: Proc,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes each `(job name, host:port)` at `/metrics`.
    pub async fn start(targets: &[(&str, &str)]) -> Self {
        let binary = std::env::var_os("PATH")
            .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join("prometheus")).find(|p| p.exists()))
            .expect("prometheus is missing: run deploy/install.sh (Debian's prometheus package)");
        let dir = TempDir::new("prometheus");
        let mut config = "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n".to_string();
        for (job, target) in targets {
            config += &format!("  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n");
        }
        let config_file = dir.0.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("writing prometheus.yml");
        let port = free_port();
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--enable-feature=exemplar-storage", "--log.level=warn"]);
        let proc = Proc::spawn("prometheus", cmd, &dir.0);
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/-/ready");
        eventually(Duration::from_secs(30), "Prometheus to be ready", || {
            let ready = ready.clone();
            async move { ureq::get(ready).call().ok() }
        })
        .await;
        Self { url, _proc: proc, _dir: dir }
    }

    /// The result vector of an instant PromQL query now, or what Prometheus said was wrong.
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        let v = self.api("query", &[("query", expr)])?;
        v["data"]["result"].as_array().cloned().ok_or_else(|| format!("no result vector in {v}"))
    }

    /// The exemplars of the series `expr` selects in the last `last`, per series
    /// (`seriesLabels`, `exemplars`: each with `labels`, `value`, `timestamp`).
    pub fn query_exemplars(&self, expr: &str, last: Duration) -> Result<Vec<serde_json::Value>, String> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let (start, end) = ((now - last).as_secs_f64().to_string(), now.as_secs_f64().to_string());
        let v = self.api("query_exemplars", &[("query", expr), ("start", &start), ("end", &end)])?;
        v["data"].as_array().cloned().ok_or_else(|| format!("no exemplar list in {v}"))
    }

    /// The values of `label` on the series `selector` matches (what Grafana's
    /// `label_values(selector, label)` lists).
    pub fn label_values(&self, selector: &str, label: &str) -> Result<Vec<serde_json::Value>, String> {
        let v = self.api(&format!("label/{label}/values"), &[("match[]", selector)])?;
        v["data"].as_array().cloned().ok_or_else(|| format!("no value list in {v}"))
    }

    /// GET `/api/v1/{endpoint}`; an answer whose status is not `success` is an error.
    fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> Result<serde_json::Value, String> {
        let mut response = ureq::get(format!("{}/api/v1/{endpoint}", self.url))
            .config()
            .http_status_as_error(false)
            .build()
            .query_pairs(params.iter().copied())
            .call()
            .map_err(|e| e.to_string())?;
        let body = response.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(v)
    }
}

/// GET a JSON document over plain HTTP.
pub fn http_get_json(url: &str) -> Result<serde_json::Value, String> {
    let body =
        ureq::get(url).call().map_err(|e| e.to_string())?.body_mut().read_to_string().map_err(|e| e.to_string())?;
    serde_json::from_str(&body).map_err(|e| e.to_string())
}

/// baton's reference site (login flow, heavy page, form) on a free loopback port.
pub struct Site {
    pub base: String,
    _proc: Proc,
    _dir: TempDir,
}

impl Site {
    pub async fn start() -> Self {
        let dir = TempDir::new("site");
        let port = free_port();
        let mut cmd = Command::new(bin("baton-site"));
        cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        let proc = Proc::spawn("baton-site", cmd, &dir.0);
        eventually(Duration::from_secs(10), "the reference site", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
        })
        .await;
        Self { base: format!("http://127.0.0.1:{port}"), _proc: proc, _dir: dir }
    }
}

/// An example spec file from examples/, as a submit request.
pub fn example(name: &str) -> baton_proto::v1::SubmitJobRequest {
    let path = workspace().join("examples").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    baton_proto::spec::parse_request(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A test certificate authority: its certificate and the ones it signs, as PEM files in a
/// folder (what `--tls-cert`, `--tls-ca` and `--client-ca` read).
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
    /// The CA certificate's file.
    pub cert: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().expect("a key"))
            .expect("a CA certificate");
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, issuer.pem()).expect("writing the CA certificate");
        Self { issuer, dir: dir.to_owned(), cert }
    }

    /// A certificate for `common_name` (and `names`: DNS names or IP addresses), usable by
    /// servers and clients; returns its certificate and key files, `FILE.pem` and `FILE-key.pem`.
    pub fn issue(&self, file: &str, common_name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        let (cert_file, key_file) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}-key.pem")));
        std::fs::write(&cert_file, cert.pem()).expect("writing a certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("writing a key");
        (cert_file, key_file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64(b"/baton/leader"), "L2JhdG9uL2xlYWRlcg==");
        for text in ["", "a", "ab", "abc", "http://127.0.0.1:7070"] {
            assert_eq!(unbase64(&base64(text.as_bytes())).as_deref(), Some(text.as_bytes()));
        }
    }

    /// Test servers' ports are distinct, free, and not from the range the kernel draws
    /// outgoing connections' source ports from.
    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len(), "a port was handed out twice");
        let (low, high) = ephemeral_ports().expect("the ephemeral range in /proc");
        assert!(ports.iter().all(|&p| !(low..=high).contains(&u32::from(p))), "{ports:?} vs ephemeral {low}-{high}");
    }
}
