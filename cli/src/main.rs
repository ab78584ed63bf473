//! `baton`: submit, watch, get, list and cancel jobs; list and drain agents.
//!
//! Layout: this file parses the command line and talks gRPC; [`show`] turns messages
//! into tables, JSON or YAML. Errors print as one line and exit non-zero.

mod analysis;
mod compare;
mod html;
mod report;
mod show;
mod tidy;

use anyhow::{Context as _, anyhow};
use baton_proto::access::{AccessRole, new_token, token_sha256};
use baton_proto::client::{Channel, ClientAuth};
use baton_proto::v1::admin_service_client::AdminServiceClient;
use baton_proto::v1::job_service_client::JobServiceClient;
use baton_proto::v1::{
    CancelJobRequest, DrainAgentRequest, GetJobRequest, Job, JobState, JobView, ListAgentsRequest, ListJobsRequest,
    UndrainAgentRequest, WatchJobRequest,
};
use clap::{Parser, Subcommand, ValueEnum};
use show::Output;
use std::io::Read as _;
use std::process::ExitCode;

/// Measure how long ML and business-process automation work takes, on many machines.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The coordinator's gRPC URL; several, comma-separated, when coordinators share etcd
    /// (any that answers will do: followers forward to the leader).
    #[arg(
        long,
        global = true,
        env = "BATON_COORDINATOR",
        default_value = "http://127.0.0.1:7070",
        value_delimiter = ','
    )]
    coordinator: Vec<String>,
    /// TLS and credentials for https:// coordinators and coordinators that authenticate.
    #[command(flatten)]
    auth: ClientAuth,
    /// How to print data.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Command {
    /// Submit the job in a spec file (JSON or YAML, `-` for stdin).
    Submit {
        file: String,
        /// Follow the job until it finishes; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// Submitting the same key again returns the first job.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Follow a job with a progress bar; print it when it finishes.
    Watch { id: String },
    /// Show one job.
    Get { id: String },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (repeatable): queued, assigned, running, succeeded, failed, cancelled.
        #[arg(long = "state")]
        states: Vec<String>,
        /// Only jobs with this label (repeatable), key=value.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only the points of this sweep.
        #[arg(long)]
        sweep: Option<String>,
        /// At most this many jobs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Cancel a job: a queued one at once, a running one through its agent (shown as
    /// `cancelling` until the agent confirms).
    Cancel {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Wait until the job has stopped; exit non-zero unless it ended cancelled.
        #[arg(long)]
        wait: bool,
    },
    /// What finished jobs measured, as tables and plots (default: the 10 latest). A sweep
    /// is reported as a whole: a line per point, power laws fitted to what it varied.
    Report {
        ids: Vec<String>,
        /// Also write one self-contained HTML page of plots here.
        #[arg(long)]
        html: Option<std::path::PathBuf>,
        /// Also write the tidy table (a row per point and figure) as CSV here (`-`: stdout).
        #[arg(long)]
        csv: Option<String>,
        /// Also write the tidy table, samples included, as JSON here (`-`: stdout).
        #[arg(long)]
        json: Option<String>,
    },
    /// Compare what two jobs or sweeps measured, figure by figure: B's median over A's with
    /// a bootstrap 95 % interval and a Mann–Whitney p-value. Exits 2 when B regressed:
    /// a figure worse by more than --threshold with p < 0.05.
    Compare {
        a: String,
        b: String,
        /// The relative change that counts (0.1: 10 % slower, or 10 % less throughput).
        #[arg(long, default_value_t = 0.1)]
        threshold: f64,
        /// Also write the comparison's plot here, as one self-contained HTML page.
        #[arg(long)]
        html: Option<std::path::PathBuf>,
    },
    /// List agents and what they offer.
    Agents,
    /// Let an agent finish its jobs and take no new ones (remembered across restarts).
    Drain { agent_id: String },
    /// End an agent's drain: it takes jobs again.
    Undrain { agent_id: String },
    /// Make a bearer token: write it to --out (readable by you only) and print the entry
    /// for the coordinator's access file, under `tokens:` (it keeps only the SHA-256).
    Token {
        /// Who the token is for: the name audit lines and job owners show.
        name: String,
        /// What it may do (repeatable): submit, read, admin, agent.
        #[arg(long = "role", required = true)]
        roles: Vec<AccessRole>,
        /// Where to write the token (must not exist).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// gRPC errors print as `invalid argument: spec.sleep.durationMs: must be ...`.
fn one_line(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        let code = format!("{:?}", status.code());
        let mut words = String::new();
        for (i, c) in code.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                words.push(' ');
            }
            words.push(c.to_ascii_lowercase());
        }
        return format!("{words}: {}", status.message());
    }
    format!("{e:#}")
}

/// The first of the coordinators that answers.
async fn connect(urls: &[String], auth: &ClientAuth) -> anyhow::Result<Channel> {
    let mut last = anyhow!("no coordinator URL given");
    let credentials = auth.credentials()?;
    for url in urls {
        let endpoint = auth.endpoint(url)?;
        match endpoint.connect_timeout(std::time::Duration::from_secs(3)).connect().await {
            Ok(channel) => return Ok(Channel::new(channel, credentials)),
            Err(e) => last = anyhow::Error::new(e).context(format!("cannot reach the coordinator at {url}")),
        }
    }
    Err(last)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Output::new(match cli.output {
        Format::Table => show::Format::Table,
        Format::Json => show::Format::Json,
        Format::Yaml => show::Format::Yaml,
    });
    if let Command::Token { name, roles, out } = &cli.command {
        return token(name, roles, out);
    }
    let channel = connect(&cli.coordinator, &cli.auth).await?;
    let mut jobs = JobServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    match cli.command {
        Command::Submit { file, wait, idempotency_key } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).context("reading the spec from stdin")?;
                s
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let mut request = baton_proto::spec::parse_request(&text).map_err(|e| anyhow!("{file}: {e}"))?;
            if let Some(key) = idempotency_key {
                request.idempotency_key = key;
            }
            let job = jobs.submit_job(request).await?.into_inner();
            if wait {
                let job = follow(&mut jobs, job.id, &out).await?;
                out.job(&job)?;
                return Ok(exit_for(&job));
            }
            out.job(&job)?;
        }
        Command::Watch { id } => {
            let job = follow(&mut jobs, id, &out).await?;
            out.job(&job)?;
            return Ok(exit_for(&job));
        }
        Command::Get { id } => out.job(&jobs.get_job(GetJobRequest { id }).await?.into_inner())?,
        Command::List { states, labels, sweep, limit } => {
            let states = states
                .iter()
                .map(|s| JobState::parse(s).map(|s| s as i32).ok_or_else(|| anyhow!("--state {s:?} is not a job state: use queued, assigned, running, succeeded, failed or cancelled")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let labels = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| anyhow!("--label {l:?} must look like key=value"))
                })
                .collect::<anyhow::Result<_>>()?;
            let request = ListJobsRequest { states, labels, sweep_id: sweep.unwrap_or_default(), ..Default::default() };
            out.jobs(&list(&mut jobs, request, limit as usize).await?)?;
        }
        Command::Report { ids, html, csv, json } => {
            let found = if ids.is_empty() {
                let finished = [JobState::Succeeded, JobState::Failed, JobState::Cancelled].map(|s| s as i32).to_vec();
                let request = ListJobsRequest { states: finished, view: JobView::Full as i32, ..Default::default() };
                let mut latest = list(&mut jobs, request, 10).await?;
                latest.reverse();
                latest
            } else {
                let mut found = Vec::new();
                for id in ids {
                    found.push(jobs.get_job(GetJobRequest { id }).await?.into_inner());
                }
                found
            };
            // A sweep stands for its points.
            let mut each = Vec::new();
            for job in &found {
                let points = points_of(&mut jobs, job).await?;
                let rows = tidy::rows(&points);
                each.push((job, points, rows));
            }
            if !out.jobs_data(&found)? {
                for (job, points, rows) in &each {
                    report::print(job, points, rows);
                }
            }
            if let Some(path) = html {
                let sections: Vec<html::Section> = each
                    .iter()
                    .map(|(job, points, rows)| {
                        let name = job.spec.as_ref().map(baton_proto::job::display_name).unwrap_or("");
                        let subtitle = format!("{} · {} job(s) · {}", job.id, points.len(), job.state().short_name());
                        html::Section::of(name.to_string(), subtitle, rows)
                    })
                    .collect();
                let plots: usize = sections.iter().map(|s| s.plots.len()).sum();
                std::fs::write(&path, html::page("baton report", &sections))
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("report: {} ({plots} plots)", path.display());
            }
            let rows: Vec<tidy::Row> = each.into_iter().flat_map(|(_, _, rows)| rows).collect();
            if let Some(path) = csv {
                write_out(&path, tidy::csv(&rows))?;
            }
            if let Some(path) = json {
                write_out(&path, serde_json::to_string_pretty(&tidy::json(&rows))? + "\n")?;
            }
        }
        Command::Compare { a, b, threshold, html } => {
            let mut sides = Vec::new();
            for id in [&a, &b] {
                let job = jobs.get_job(GetJobRequest { id: id.clone() }).await?.into_inner();
                sides.push(tidy::rows(&points_of(&mut jobs, &job).await?));
            }
            let found = compare::compare(&sides[0], &sides[1], threshold);
            if found.is_empty() {
                return Err(anyhow!("{a} and {b} measured no figure in common"));
            }
            if !out.data(&compare::json(&found))? {
                report::comparison(&found, threshold);
            }
            if let Some(path) = html {
                let page = html::comparison_page(&format!("{b} against {a}"), &found, threshold);
                std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("comparison: {}", path.display());
            }
            let regressed = found.iter().filter(|c| c.verdict == compare::Verdict::Regression).count();
            if regressed > 0 {
                eprintln!("{regressed} figure(s) regressed");
                return Ok(ExitCode::from(2));
            }
        }
        Command::Cancel { id, reason, wait } => {
            let job = jobs.cancel_job(CancelJobRequest { id, reason }).await?.into_inner();
            if wait && !job.state().is_terminal() {
                let job = follow(&mut jobs, job.id, &out).await?;
                out.job(&job)?;
                return Ok(if job.state() == JobState::Cancelled { ExitCode::SUCCESS } else { ExitCode::FAILURE });
            }
            out.job(&job)?
        }
        Command::Token { .. } => unreachable!("handled before connecting"),
        Command::Agents => {
            let agents = AdminServiceClient::new(channel).list_agents(ListAgentsRequest {}).await?.into_inner().agents;
            out.agents(&agents)?;
        }
        Command::Drain { agent_id } => {
            let agent =
                AdminServiceClient::new(channel).drain_agent(DrainAgentRequest { agent_id }).await?.into_inner();
            out.agents(&[agent])?;
        }
        Command::Undrain { agent_id } => {
            let agent =
                AdminServiceClient::new(channel).undrain_agent(UndrainAgentRequest { agent_id }).await?.into_inner();
            out.agents(&[agent])?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Up to `limit` jobs, newest first, following page tokens (a page may come back short).
async fn list(
    client: &mut JobServiceClient<Channel>,
    mut request: ListJobsRequest,
    limit: usize,
) -> anyhow::Result<Vec<Job>> {
    let mut found = Vec::new();
    while found.len() < limit {
        request.page_size = (limit - found.len()).min(1000) as u32;
        let page = client.list_jobs(request.clone()).await?.into_inner();
        found.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    Ok(found)
}

/// What a job measured in: the job itself, or a sweep's points (in the order it ran them).
async fn points_of(client: &mut JobServiceClient<Channel>, job: &Job) -> anyhow::Result<Vec<Job>> {
    if job.sweep.is_none() {
        return Ok(vec![job.clone()]);
    }
    let request = ListJobsRequest { sweep_id: job.id.clone(), view: JobView::Full as i32, ..Default::default() };
    let mut points = list(client, request, baton_proto::spec::sweep::MAX_SWEEP_JOBS).await?;
    points.reverse();
    Ok(points)
}

/// Writes to a file, or to stdout for `-`.
fn write_out(path: &str, text: String) -> anyhow::Result<()> {
    if path == "-" {
        print!("{text}");
        Ok(())
    } else {
        std::fs::write(path, text).with_context(|| format!("writing {path}"))
    }
}

fn exit_for(job: &Job) -> ExitCode {
    if job.state() == JobState::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Streams the job's changes into a progress bar until it finishes; returns its last version.
async fn follow(client: &mut JobServiceClient<Channel>, id: String, out: &Output) -> anyhow::Result<Job> {
    let mut stream = client.watch_job(WatchJobRequest { id: id.clone() }).await?.into_inner();
    let bar = out.progress_bar();
    let mut last = None;
    while let Some(job) = stream.message().await? {
        show::update_bar(&bar, &job);
        last = Some(job);
    }
    bar.finish_and_clear();
    last.ok_or_else(|| anyhow!("the coordinator ended the watch of job {id} without sending it"))
}

/// `baton token`: a new token in `out` (0600), its access-file entry on stdout.
fn token(name: &str, roles: &[AccessRole], out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let token = new_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("--out {}", out.display()))?;
    writeln!(file, "{token}").with_context(|| format!("writing {}", out.display()))?;
    let roles: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    println!(
        "  - name: {}\n    roles: [{}]\n    sha256: {}",
        serde_json::to_string(name)?,
        roles.join(", "),
        token_sha256(&token)
    );
    Ok(ExitCode::SUCCESS)
}
