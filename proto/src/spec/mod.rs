//! Spec files and spec validation.
//!
//! A spec file is the proto3 JSON of a `SubmitJobRequest` (`{"spec": {...}}`), or the
//! same in YAML, so one file works with `grpcurl -d @` and with `baton submit`.
//! Validation names the field as users write it (JSON names) and the rule it broke.

pub mod browser;
pub mod gpt2;
pub mod sweep;

use crate::job::KIND_NAMES;
use crate::v1::{Capabilities, JobSpec, SubmitJobRequest, job_spec};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// A spec field that breaks a rule: `spec.sleep.durationMs: must be at most 86400000`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub field: String,
    pub rule: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

impl SpecError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self { field: field.into(), rule: rule.into() }
    }
}

pub type Check = Result<(), SpecError>;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const MAX_ATTEMPTS: u32 = 100;
pub const MAX_SLEEP_MS: u64 = 24 * 3600 * 1000;
const MAX_NAME_CHARS: usize = 200;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// Reads a spec file's text: JSON when it starts with `{`, YAML otherwise.
pub fn parse_request(text: &str) -> Result<SubmitJobRequest, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(trimmed).map_err(|e| format!("invalid spec JSON: {e}"))
    } else {
        let value: serde_json::Value = serde_yaml_ng::from_str(text).map_err(|e| format!("invalid spec YAML: {e}"))?;
        serde_json::from_value(value).map_err(|e| format!("invalid spec: {e}"))
    }
}

/// Checks a spec before anything is accepted; the error names the field and the rule.
pub fn validate(spec: &JobSpec) -> Check {
    check(spec).map(|_| ())
}

/// [`validate`], returning a sweep's points (each checked; built once): none for a plain
/// job.
pub fn check(spec: &JobSpec) -> Result<Vec<sweep::Point>, SpecError> {
    let bytes = prost::Message::encoded_len(spec);
    if bytes > crate::limits::MAX_SPEC_BYTES {
        return Err(SpecError::new(
            "spec",
            format!(
                "is {} encoded; at most {} is accepted",
                crate::limits::size(bytes),
                crate::limits::size(crate::limits::MAX_SPEC_BYTES)
            ),
        ));
    }
    if spec.name.chars().count() > MAX_NAME_CHARS {
        return Err(SpecError::new("spec.name", format!("must be at most {MAX_NAME_CHARS} characters")));
    }
    if sweep::is_sweep(spec) {
        return sweep::expand(spec);
    }
    if spec.max_attempts > MAX_ATTEMPTS {
        return Err(SpecError::new(
            "spec.maxAttempts",
            format!("must be between 1 and {MAX_ATTEMPTS} (0 means the default, {DEFAULT_MAX_ATTEMPTS})"),
        ));
    }
    if let Some(t) = &spec.timeout {
        if t.seconds < 0 || t.nanos < 0 || (t.seconds == 0 && t.nanos == 0) {
            return Err(SpecError::new("spec.timeout", "must be positive"));
        }
        if crate::job::to_duration(t) > MAX_TIMEOUT {
            return Err(SpecError::new("spec.timeout", "must be at most 7 days (604800s)"));
        }
    }
    validate_labels("spec.labels", &spec.labels)?;
    if let Some(r) = &spec.requirements {
        validate_labels("spec.requirements.agentLabels", &r.agent_labels)?;
    }
    let kind: Check = match &spec.kind {
        None => {
            Err(SpecError::new("spec", format!("exactly one job kind is required: one of {}", KIND_NAMES.join(", "))))
        }
        Some(job_spec::Kind::Noop(_)) => Ok(()),
        Some(job_spec::Kind::Sleep(s)) => {
            if s.duration_ms > MAX_SLEEP_MS {
                Err(SpecError::new("spec.sleep.durationMs", format!("must be at most {MAX_SLEEP_MS} (24 h)")))
            } else {
                Ok(())
            }
        }
        Some(job_spec::Kind::Gpt2Train(s)) => gpt2::validate_train(s),
        Some(job_spec::Kind::Gpt2Infer(s)) => gpt2::validate_infer(s),
        Some(job_spec::Kind::Browser(s)) => browser::validate(s),
    };
    kind.map(|()| Vec::new())
}

fn validate_labels(field: &str, labels: &std::collections::HashMap<String, String>) -> Check {
    for (k, v) in labels {
        let key_ok =
            !k.is_empty() && k.len() <= 63 && k.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c));
        if !key_ok {
            return Err(SpecError::new(
                format!("{field}[{k:?}]"),
                "label keys must be 1-63 characters of letters, digits, '.', '_', '-' or '/'",
            ));
        }
        if v.len() > 256 {
            return Err(SpecError::new(format!("{field}[{k:?}]"), "label values must be at most 256 bytes"));
        }
    }
    Ok(())
}

/// What a job needs from an agent beyond supporting its kind; equal needs match the
/// same agents.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct AgentNeeds {
    pub cuda: bool,
    /// `chrome` or `firefox`; empty when no browser is needed.
    pub browser: String,
    /// A headed browser needs an X display.
    pub display: bool,
    pub desktop_input: bool,
}

fn needs(spec: &JobSpec) -> AgentNeeds {
    match &spec.kind {
        None | Some(job_spec::Kind::Noop(_)) | Some(job_spec::Kind::Sleep(_)) => AgentNeeds::default(),
        Some(job_spec::Kind::Gpt2Train(s)) => AgentNeeds { cuda: gpt2::needs_cuda_train(s), ..Default::default() },
        Some(job_spec::Kind::Gpt2Infer(s)) => AgentNeeds { cuda: gpt2::needs_cuda_infer(s), ..Default::default() },
        Some(job_spec::Kind::Browser(s)) => {
            let b = browser::requirements(s);
            AgentNeeds { cuda: false, browser: b.browser, display: b.display, desktop_input: b.desktop_input }
        }
    }
}

/// The agent label naming an agent's pool (the Helm chart sets it on every agent); a job
/// asks for a pool with `requirements.agentLabels.pool`.
pub const POOL_LABEL: &str = "pool";

/// Everything that decides which agents may run a job, computed once per job: jobs with
/// equal placements fit exactly the same agents (the scheduler queues them together).
///
/// **Architecture invariant:** [`Placement::mismatch`] is the one rule of "can this agent
/// run this job"; scheduling, the "no agent could run this" reason and tests all ask it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The job kind's JSON name; the agent must list it.
    pub kind: &'static str,
    pub needs: AgentNeeds,
    /// Labels the agent must carry with these values, sorted.
    pub agent_labels: Vec<(String, String)>,
    pub min_cpu_cores: u32,
}

impl Placement {
    pub fn of(spec: &JobSpec) -> Self {
        let (mut agent_labels, min_cpu_cores) = match &spec.requirements {
            Some(r) => (r.agent_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), r.min_cpu_cores),
            None => (Vec::new(), 0),
        };
        agent_labels.sort();
        let kind = spec.kind.as_ref().map(crate::job::kind_name).unwrap_or("");
        Self { kind, needs: needs(spec), agent_labels, min_cpu_cores }
    }

    /// The kind of agent pool that runs these jobs (the Helm chart's pool kinds): `gpu`
    /// when CUDA is needed, `browser` when a browser is, else `cpu`.
    pub fn pool_kind(&self) -> &'static str {
        if self.needs.cuda {
            "gpu"
        } else if !self.needs.browser.is_empty() {
            "browser"
        } else {
            "cpu"
        }
    }

    /// The agent pool these jobs ask for by the agent label `pool`; "" when any will do.
    pub fn pool(&self) -> &str {
        self.agent_labels.iter().find(|(k, _)| k == POOL_LABEL).map_or("", |(_, v)| v)
    }

    /// Why an agent with these labels and capabilities cannot run the job, or `None`.
    pub fn mismatch(&self, labels: &HashMap<String, String>, caps: &Capabilities) -> Option<String> {
        let kind = self.kind;
        if !caps.job_kinds.iter().any(|k| k == kind) {
            return Some(format!("job kind {kind} is not supported"));
        }
        for (k, v) in &self.agent_labels {
            if labels.get(k) != Some(v) {
                return Some(format!("label {k}={v} is required"));
            }
        }
        if self.min_cpu_cores > caps.cpu_cores {
            return Some(format!("{} CPU cores are required", self.min_cpu_cores));
        }
        let needs = &self.needs;
        if needs.cuda && caps.cuda_devices.is_empty() {
            return Some("a CUDA device is required".into());
        }
        if !needs.browser.is_empty() && !caps.browsers.iter().any(|b| b.name == needs.browser) {
            return Some(format!("browser {} is required", needs.browser));
        }
        if needs.display && caps.display.is_empty() {
            return Some("an X display is required (headed browser)".into());
        }
        if needs.desktop_input && !caps.desktop_input {
            return Some("desktop input is required (an agent started with --desktop-input and a display)".into());
        }
        None
    }
}

/// Fills in the defaults so the stored spec says exactly what runs.
pub fn normalize(spec: &mut JobSpec) {
    if spec.max_attempts == 0 {
        spec.max_attempts = DEFAULT_MAX_ATTEMPTS;
    }
    if spec.timeout.is_none() {
        spec.timeout = Some(crate::job::from_duration(DEFAULT_TIMEOUT));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::SleepSpec;

    fn sleep_spec(ms: u64) -> JobSpec {
        JobSpec { kind: Some(job_spec::Kind::Sleep(SleepSpec { duration_ms: ms, fail: false })), ..Default::default() }
    }

    /// A spec over the size limit: a browser scenario with a 600 KiB script.
    fn huge_spec() -> JobSpec {
        let text =
            format!(r#"{{"spec":{{"browser":{{"steps":[{{"script":{{"script":"{}"}}}}]}}}}}}"#, "x".repeat(600 * 1024));
        parse_request(&text).unwrap().spec.unwrap()
    }

    #[test]
    fn readme_example_parses_as_json_and_yaml() {
        let json = parse_request(r#"{"spec":{"name":"hello","sleep":{"durationMs":100}}}"#).unwrap();
        let yaml = parse_request("spec:\n  name: hello\n  sleep:\n    durationMs: 100\n").unwrap();
        assert_eq!(json, yaml);
        assert_eq!(json.spec.unwrap(), JobSpec { name: "hello".into(), ..sleep_spec(100) });
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = parse_request(r#"{"spec":{"sleep":{"durationMS":100}}}"#).unwrap_err();
        assert!(e.contains("durationMS"), "{e}");
    }

    #[test]
    fn rules_name_the_field() {
        let cases: Vec<(JobSpec, &str)> = vec![
            (JobSpec::default(), "spec: exactly one job kind is required"),
            (sleep_spec(MAX_SLEEP_MS + 1), "spec.sleep.durationMs: must be at most"),
            (JobSpec { max_attempts: 101, ..sleep_spec(1) }, "spec.maxAttempts: must be between 1 and 100"),
            (
                JobSpec { timeout: Some(pbjson_types::Duration { seconds: 0, nanos: 0 }), ..sleep_spec(1) },
                "spec.timeout: must be positive",
            ),
            (JobSpec { name: "x".repeat(201), ..sleep_spec(1) }, "spec.name: must be at most 200"),
            (huge_spec(), "spec: is 600.0 KiB encoded; at most 512.0 KiB is accepted"),
            (
                JobSpec { labels: [("bad key".into(), "v".into())].into(), ..sleep_spec(1) },
                "spec.labels[\"bad key\"]: label keys must be",
            ),
        ];
        for (spec, want) in cases {
            let got = validate(&spec).unwrap_err().to_string();
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn jobs_go_only_to_agents_that_have_what_they_need() {
        let spec = |json: &str| parse_request(json).unwrap().spec.unwrap();
        let headless = spec(r#"{"spec":{"browser":{"steps":[{"open":{"url":"http://127.0.0.1/"}}]}}}"#);
        let headed = spec(r#"{"spec":{"browser":{"headless":false,"steps":[{"open":{"url":"http://127.0.0.1/"}}]}}}"#);
        let cuda = spec(r#"{"spec":{"gpt2Train":{"model":{"preset":"gpt2"},"device":"cuda:0"}}}"#);
        let kinds = vec!["browser".to_string(), "gpt2Train".to_string()];
        let bare = Capabilities { job_kinds: kinds, cpu_cores: 2, ..Default::default() };
        let chrome = Capabilities {
            browsers: vec![crate::v1::BrowserInfo { name: "chrome".into(), ..Default::default() }],
            ..bare.clone()
        };
        let mismatch = |spec: &JobSpec, caps: &Capabilities| Placement::of(spec).mismatch(&HashMap::new(), caps);
        assert_eq!(mismatch(&headless, &bare).as_deref(), Some("browser chrome is required"));
        assert_eq!(mismatch(&headless, &chrome), None);
        assert_eq!(mismatch(&headed, &chrome).as_deref(), Some("an X display is required (headed browser)"));
        let with_display = Capabilities { display: ":99".into(), ..chrome };
        assert_eq!(mismatch(&headed, &with_display), None);
        assert_eq!(mismatch(&cuda, &with_display).as_deref(), Some("a CUDA device is required"));
        let sleep = sleep_spec(1);
        assert_eq!(mismatch(&sleep, &with_display).as_deref(), Some("job kind sleep is not supported"));
        let labelled = JobSpec {
            requirements: Some(crate::v1::Requirements {
                agent_labels: [("gpu".into(), "h200".into())].into(),
                min_cpu_cores: 64,
            }),
            ..headless.clone()
        };
        assert_eq!(mismatch(&labelled, &with_display).as_deref(), Some("label gpu=h200 is required"));
        let gpu = HashMap::from([("gpu".to_string(), "h200".to_string())]);
        let placement = Placement::of(&labelled);
        assert_eq!(placement.mismatch(&gpu, &with_display).as_deref(), Some("64 CPU cores are required"));
        assert_ne!(placement, Placement::of(&headless), "requirements make a different placement");
    }

    #[test]
    fn every_example_is_valid_and_the_sweeps_expand() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let spec = parse_request(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())).spec.unwrap();
            validate(&spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let points = sweep::is_sweep(&spec).then(|| sweep::expand(&spec).unwrap().len());
            match path.file_name().unwrap().to_str().unwrap() {
                "sweep-gpt2.json" => assert_eq!(points, Some(16), "2 models x 4 lengths x 2 thread counts"),
                "sweep-browser.json" => assert_eq!(points, Some(2), "cold and warm"),
                _ => assert_eq!(points, None),
            }
        }
    }

    #[test]
    fn normalize_fills_defaults() {
        let mut s = sleep_spec(1);
        normalize(&mut s);
        assert_eq!(s.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(crate::job::to_duration(s.timeout.as_ref().unwrap()), DEFAULT_TIMEOUT);
    }
}
