//! Shared by the end-to-end tests and the benchmarks: start the real binaries (and
//! Jaeger) on free loopback ports, each with its own data directory and log files, and
//! stop them when dropped.

use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::job_service_client::JobServiceClient;
use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
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
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
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

/// A coordinator and its agents on loopback.
pub struct Cluster {
    pub url: String,
    pub port: u16,
    pub dir: TempDir,
    pub coordinator: Option<Proc>,
    pub agents: Vec<Proc>,
    coordinator_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// A coordinator with the given extra flags (e.g. `--lease-timeout 1s`) and environment.
    pub async fn start(coordinator_args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut cluster = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            dir: TempDir::new("cluster"),
            coordinator: None,
            agents: Vec::new(),
            coordinator_args: coordinator_args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        cluster.start_coordinator().await;
        cluster
    }

    /// Starts (or restarts) the coordinator on the same port and data directory.
    pub async fn start_coordinator(&mut self) {
        let mut cmd = Command::new(bin("baton-coordinator"));
        cmd.arg("--listen").arg(format!("127.0.0.1:{}", self.port));
        cmd.arg("--data-dir").arg(self.dir.0.join("data"));
        cmd.args(&self.coordinator_args).envs(self.env.iter().cloned());
        self.coordinator = Some(Proc::spawn("coordinator", cmd, &self.dir.0));
        let url = self.url.clone();
        eventually(Duration::from_secs(20), "the coordinator to listen", || {
            let url = url.clone();
            async move { tonic::transport::Endpoint::from_shared(url).ok()?.connect().await.ok() }
        })
        .await;
    }

    pub fn kill9_coordinator(&mut self) {
        if let Some(c) = self.coordinator.as_mut() {
            c.kill9();
        }
    }

    /// Starts an agent named `name` with `slots` slots and extra flags; returns its index.
    pub fn add_agent(&mut self, name: &str, slots: u32, args: &[&str]) -> usize {
        let mut cmd = Command::new(bin("baton-agent"));
        cmd.arg("--coordinator").arg(&self.url).arg("--name").arg(name).arg("--slots").arg(slots.to_string());
        cmd.args(args).envs(self.env.iter().cloned());
        self.agents.push(Proc::spawn(name, cmd, &self.dir.0));
        self.agents.len() - 1
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("a valid URL")
            .connect()
            .await
            .expect("connecting to the coordinator")
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

    /// Runs the `baton` CLI against this cluster; returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
        use std::io::Write;
        let mut child = Command::new(bin("baton"))
            .arg("--coordinator")
            .arg(&self.url)
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
