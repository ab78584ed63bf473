//! Jobs and agents as tables (for people), JSON (proto3 JSON, as grpcurl prints) or YAML.

use baton_proto::job::{display_name, kind_name, to_system_time};
use baton_proto::v1::{Agent, Job, JobState};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::time::SystemTime;

#[derive(Clone, Copy, PartialEq)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

pub struct Output {
    format: Format,
}

impl Output {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    pub fn data<T: Serialize>(&self, value: &T) -> anyhow::Result<bool> {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
            Format::Yaml => println!("{}", serde_yaml_ng::to_string(value)?.trim_end()),
            Format::Table => return Ok(false),
        }
        Ok(true)
    }

    pub fn job(&self, job: &Job) -> anyhow::Result<()> {
        if self.data(job)? {
            return Ok(());
        }
        let mut t = table(&["field", "value"]);
        let kind = job.spec.as_ref().and_then(|s| s.kind.as_ref()).map(kind_name).unwrap_or("");
        let rows = [
            ("id", job.id.clone()),
            ("name", job.spec.as_ref().map(display_name).unwrap_or("").to_string()),
            ("kind", kind.to_string()),
            ("state", state_text(job)),
            ("attempt", job.attempt.to_string()),
            ("agent", job.agent_id.clone()),
            ("reason", job.reason.clone()),
            ("queued for", queued_for(job)),
            ("ran for", ran_for(job)),
            ("trace id", job.trace_id.clone()),
        ];
        for (k, v) in rows.into_iter().filter(|(_, v)| !v.is_empty()) {
            t.add_row([k.to_string(), v]);
        }
        println!("{t}");
        if job.result.is_some() {
            crate::report::measured(job);
        }
        Ok(())
    }

    /// Prints the jobs as JSON or YAML when that is the format; false for tables.
    pub fn jobs_data(&self, jobs: &[Job]) -> anyhow::Result<bool> {
        self.data(&jobs)
    }

    pub fn jobs(&self, jobs: &[Job]) -> anyhow::Result<()> {
        if self.data(&jobs)? {
            return Ok(());
        }
        let mut t = table(&["id", "name", "kind", "state", "attempt", "agent", "ran for", "reason"]);
        for job in jobs {
            let kind = job.spec.as_ref().and_then(|s| s.kind.as_ref()).map(kind_name).unwrap_or("");
            t.add_row([
                job.id.clone(),
                job.spec.as_ref().map(display_name).unwrap_or("").to_string(),
                kind.to_string(),
                state_text(job),
                job.attempt.to_string(),
                job.agent_id.clone(),
                ran_for(job),
                job.reason.clone(),
            ]);
        }
        println!("{t}");
        Ok(())
    }

    pub fn agents(&self, agents: &[Agent]) -> anyhow::Result<()> {
        if self.data(&agents)? {
            return Ok(());
        }
        let mut t = table(&["id", "state", "slots", "running", "cores", "job kinds", "devices", "labels"]);
        for a in agents {
            let caps = a.capabilities.clone().unwrap_or_default();
            let state = match (a.connected, a.draining) {
                (false, _) => "disconnected",
                (true, true) => "draining",
                (true, false) => "ready",
            };
            let mut devices: Vec<String> =
                caps.cuda_devices.iter().map(|d| format!("cuda:{} {}", d.index, d.name)).collect();
            devices.extend(caps.browsers.iter().map(|b| format!("{} {}", b.name, b.version)));
            if !caps.display.is_empty() {
                devices.push(format!("display {}", caps.display));
            }
            let mut labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            t.add_row([
                a.id.clone(),
                state.to_string(),
                a.slots.to_string(),
                a.running.to_string(),
                caps.cpu_cores.to_string(),
                caps.job_kinds.join(", "),
                devices.join(", "),
                labels.join(", "),
            ]);
        }
        println!("{t}");
        Ok(())
    }

    /// A bar on stderr when it is a terminal and the output is for people; hidden otherwise.
    pub fn progress_bar(&self) -> ProgressBar {
        if self.format != Format::Table || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(1000);
        let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    }
}

/// The job's state as people read it: `running`, or `cancelling` once a cancel was asked
/// for and the agent has not confirmed it yet.
pub fn state_text(job: &Job) -> String {
    if job.cancel_requested && !job.state().is_terminal() {
        "cancelling".to_string()
    } else {
        job.state().short_name().to_string()
    }
}

pub fn update_bar(bar: &ProgressBar, job: &Job) {
    let progress = job.progress.clone().unwrap_or_default();
    bar.set_position((progress.fraction.clamp(0.0, 1.0) * 1000.0) as u64);
    let mut msg = state_text(job);
    if job.state() == JobState::Queued && !job.reason.is_empty() {
        msg = format!("{msg}: {}", job.reason);
    } else if !progress.message.is_empty() {
        msg = format!("{msg}: {}", progress.message);
    }
    bar.set_message(msg);
}

/// A table in the CLI's one style, with this header.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header);
    t
}

fn seconds_between(a: Option<&pbjson_types::Timestamp>, b: Option<SystemTime>) -> String {
    let (Some(a), Some(b)) = (a, b) else { return String::new() };
    match b.duration_since(to_system_time(a)) {
        Ok(d) => format!("{:.3}s", d.as_secs_f64()),
        Err(_) => String::new(),
    }
}

fn queued_for(job: &Job) -> String {
    let until =
        job.started_at.as_ref().map(to_system_time).or_else(|| (job.state() == JobState::Queued).then(SystemTime::now));
    seconds_between(job.submitted_at.as_ref(), until)
}

fn ran_for(job: &Job) -> String {
    let until =
        job.finished_at.as_ref().map(to_system_time).or_else(|| (!job.state().is_terminal()).then(SystemTime::now));
    seconds_between(job.started_at.as_ref(), until)
}
