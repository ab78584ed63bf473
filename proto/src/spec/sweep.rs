//! Sweeps: a spec with a `matrix` (or a `repeat` above 1) stands for one job per
//! combination of the matrix's values, each run `repeat` times — its points.
//!
//! Expansion is the one rule of what a sweep's points are: validation (a sweep is valid
//! when every point is) and the coordinator (which submits the points) both call
//! [`expand`].

use super::{MAX_NAME_CHARS, SpecError, validate};
use crate::v1::{JobSpec, SweepPoint};
use serde_json::Value as Json;

/// Most jobs one sweep may make (combinations × repeat): a submission's batch limit.
pub const MAX_SWEEP_JOBS: usize = 10_000;
/// Most bytes a sweep's points may add up to (each about the size of the sweep's spec):
/// one submission cannot make the coordinator hold or store gigabytes.
pub const MAX_SWEEP_BYTES: usize = 64 << 20;

/// A sweep's job: its spec (the template with this point's values) and where it sits.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub spec: JobSpec,
    pub point: SweepPoint,
}

pub fn is_sweep(spec: &JobSpec) -> bool {
    !spec.matrix.is_empty() || spec.repeat > 1
}

/// The sweep's points in order: the combinations (matrix keys sorted, the last key
/// varying fastest), each `repeat` times in a row. Every point is validated; the first
/// bad one refuses the whole sweep, naming the field, the rule and the point.
pub fn expand(spec: &JobSpec) -> Result<Vec<Point>, SpecError> {
    let mut keys: Vec<&String> = spec.matrix.keys().collect();
    keys.sort();
    let mut axes: Vec<(&str, Vec<Json>)> = Vec::with_capacity(keys.len());
    for key in keys {
        let field = format!("spec.matrix[{key:?}]");
        check_path(key).map_err(|rule| SpecError::new(&field, rule))?;
        let values: Vec<Json> = spec.matrix[key].values.iter().map(to_json).collect();
        if values.is_empty() {
            return Err(SpecError::new(field, "must list at least one value"));
        }
        axes.push((key, values));
    }
    let repeat = spec.repeat.max(1) as usize;
    let combinations = axes.iter().try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()));
    let jobs = combinations.and_then(|n| n.checked_mul(repeat));
    if jobs.is_none_or(|n| n > MAX_SWEEP_JOBS) {
        let combinations = combinations.map_or("too many".to_string(), |n| n.to_string());
        return Err(SpecError::new(
            "spec.matrix",
            format!("{combinations} combinations x repeat {repeat} is more than {MAX_SWEEP_JOBS} jobs"),
        ));
    }
    let each = prost::Message::encoded_len(spec);
    let bytes = jobs.unwrap_or(0).saturating_mul(each);
    if bytes > MAX_SWEEP_BYTES {
        let (jobs, size) = (jobs.unwrap_or(0), crate::limits::size);
        return Err(SpecError::new(
            "spec.matrix",
            format!(
                "{jobs} jobs of {} each come to {}; at most {} is accepted",
                size(each),
                size(bytes),
                size(MAX_SWEEP_BYTES)
            ),
        ));
    }
    let mut template = spec.clone();
    template.matrix.clear();
    template.repeat = 0;
    let template_json = serde_json::to_value(&template).map_err(|e| SpecError::new("spec", e.to_string()))?;
    let short_names = short_names(&axes.iter().map(|(path, _)| *path).collect::<Vec<_>>());
    let mut points = Vec::with_capacity(jobs.unwrap_or(0));
    let mut index = vec![0usize; axes.len()];
    loop {
        let mut json = template_json.clone();
        let mut values = std::collections::HashMap::new();
        let mut label = Vec::with_capacity(axes.len());
        for (((path, axis), i), short) in axes.iter().zip(&index).zip(&short_names) {
            let value = &axis[*i];
            set_path(&mut json, path, value.clone())
                .map_err(|rule| SpecError::new(format!("spec.matrix[{path:?}]"), rule))?;
            values.insert(path.to_string(), from_json(value));
            label.push(format!("{short}={}", show(value)));
        }
        let label = label.join(" ");
        let mut point_spec: JobSpec = serde_json::from_value(json)
            .map_err(|e| SpecError::new("spec.matrix", format!("the point {label} is not a valid spec: {e}")))?;
        validate(&point_spec)
            .map_err(|e| SpecError::new(e.field, format!("{} (in the sweep's point {label})", e.rule)))?;
        let base = crate::job::display_name(&point_spec).to_string();
        for r in 1..=repeat {
            let mut name =
                [base.as_str(), label.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
            if repeat > 1 {
                name.push_str(&format!(" #{r}"));
            }
            point_spec.name = name.chars().take(MAX_NAME_CHARS).collect();
            points.push(Point {
                spec: point_spec.clone(),
                point: SweepPoint { values: values.clone(), repeat: r as u32 },
            });
        }
        // The next combination: the last axis varies fastest.
        let mut axis = axes.len();
        loop {
            if axis == 0 {
                return Ok(points);
            }
            axis -= 1;
            index[axis] += 1;
            if index[axis] < axes[axis].1.len() {
                break;
            }
            index[axis] = 0;
        }
    }
}

fn check_path(path: &str) -> Result<(), String> {
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err("must be a field path such as gpt2Train.seqLen".into());
    }
    if matches!(segments[0], "matrix" | "repeat") {
        return Err("a sweep's own matrix and repeat cannot be swept".into());
    }
    Ok(())
}

/// A field path's last field.
pub fn last_field(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// The name of each swept path in points' names and reports: its last field, or the
/// whole path where two paths share a last field.
pub fn short_names<S: AsRef<str>>(paths: &[S]) -> Vec<String> {
    paths
        .iter()
        .map(|path| {
            let path = path.as_ref();
            let shared = paths.iter().filter(|other| last_field(other.as_ref()) == last_field(path)).count() > 1;
            if shared { path.to_string() } else { last_field(path).to_string() }
        })
        .collect()
}

/// Sets `path` in a spec's JSON, making the objects on the way.
fn set_path(json: &mut Json, path: &str, value: Json) -> Result<(), String> {
    let mut here = json;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let Json::Object(object) = here else {
            return Err(format!("{segment} is inside a field that is not an object"));
        };
        if segments.peek().is_none() {
            object.insert(segment.to_string(), value);
            return Ok(());
        }
        here = object.entry(segment.to_string()).or_insert_with(|| Json::Object(Default::default()));
    }
    Ok(())
}

/// A value as people read it in a point's name: strings without quotes.
pub fn show(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A matrix value as JSON; whole numbers as integers (proto3 JSON has only doubles), so
/// `64` stays `64` in names and in integer fields.
pub fn to_json(value: &pbjson_types::Value) -> Json {
    match serde_json::to_value(value).unwrap_or(Json::Null) {
        Json::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Json::from(f as i64),
            _ => Json::Number(n),
        },
        other => other,
    }
}

pub fn from_json(value: &Json) -> pbjson_types::Value {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_request;

    fn spec(json: &str) -> JobSpec {
        parse_request(json).unwrap().spec.unwrap()
    }

    fn names(points: &[Point]) -> Vec<&str> {
        points.iter().map(|p| p.spec.name.as_str()).collect()
    }

    #[test]
    fn a_matrix_expands_to_its_cartesian_product_each_repeated() {
        let sweep = spec(
            r#"{"spec":{"name":"seq","repeat":2,"matrix":{"gpt2Train.threads":[1,2],"gpt2Train.seqLen":[64,128]},
               "gpt2Train":{"model":{"preset":"gpt2"},"batch":1,"steps":1}}}"#,
        );
        assert!(is_sweep(&sweep));
        let points = expand(&sweep).unwrap();
        assert_eq!(
            names(&points),
            [
                "seq seqLen=64 threads=1 #1",
                "seq seqLen=64 threads=1 #2",
                "seq seqLen=64 threads=2 #1",
                "seq seqLen=64 threads=2 #2",
                "seq seqLen=128 threads=1 #1",
                "seq seqLen=128 threads=1 #2",
                "seq seqLen=128 threads=2 #1",
                "seq seqLen=128 threads=2 #2",
            ]
        );
        let last = &points[7];
        let Some(crate::v1::job_spec::Kind::Gpt2Train(t)) = &last.spec.kind else { panic!() };
        assert_eq!((t.seq_len, t.threads, t.batch), (128, 2, 1));
        assert!(last.spec.matrix.is_empty() && last.spec.repeat == 0, "a point is not a sweep");
        assert_eq!(last.point.repeat, 2);
        assert_eq!(to_json(&last.point.values["gpt2Train.seqLen"]), serde_json::json!(128));
    }

    #[test]
    fn strings_objects_and_new_fields_can_be_swept() {
        let sweep = spec(
            r#"{"spec":{"matrix":{"gpt2Train.model.preset":["gpt2","gpt2-medium"],"gpt2Train.dtype":["bf16"]},
               "gpt2Train":{"batch":1,"seqLen":8,"steps":1}}}"#,
        );
        let points = expand(&sweep).unwrap();
        assert_eq!(names(&points), ["gpt2Train dtype=bf16 preset=gpt2", "gpt2Train dtype=bf16 preset=gpt2-medium"]);
        let browser = spec(
            r#"{"spec":{"name":"login","matrix":{"browser.mode":["cold","warm"],"browser.browser":["chrome","firefox"]},
               "browser":{"repeat":3,"steps":[{"open":{"url":"http://127.0.0.1:1/"}}]}}}"#,
        );
        assert_eq!(expand(&browser).unwrap().len(), 4);
        let plain_repeat = spec(r#"{"spec":{"repeat":3,"noop":{}}}"#);
        assert_eq!(names(&expand(&plain_repeat).unwrap()), ["noop #1", "noop #2", "noop #3"]);
        assert!(!is_sweep(&spec(r#"{"spec":{"repeat":1,"noop":{}}}"#)));
    }

    #[test]
    fn a_bad_point_refuses_the_sweep_naming_field_rule_and_point() {
        // 10 000 points of a 10 KiB scenario: 100 MiB.
        let big_sweep = format!(
            r#"{{"spec":{{"repeat":10000,"browser":{{"steps":[{{"script":{{"script":"{}"}}}}]}}}}}}"#,
            "x".repeat(10 << 10)
        );
        let cases = [
            (
                r#"{"spec":{"matrix":{"gpt2Train.seqLen":[64,2048]},"gpt2Train":{"model":{"preset":"gpt2"},"batch":1,"steps":1}}}"#,
                "spec.gpt2Train.seqLen: ",
                "(in the sweep's point seqLen=2048)",
            ),
            (
                r#"{"spec":{"matrix":{"gpt2Train.seqLn":[64]},"gpt2Train":{"batch":1,"steps":1}}}"#,
                "spec.matrix: the point seqLn=64 is not a valid spec",
                "seqLn",
            ),
            (
                r#"{"spec":{"matrix":{"sleep.durationMs":[]},"sleep":{}}}"#,
                r#"spec.matrix["sleep.durationMs"]: "#,
                "at least one",
            ),
            (
                r#"{"spec":{"matrix":{"sleep..x":[1]},"sleep":{}}}"#,
                r#"spec.matrix["sleep..x"]: must be a field path"#,
                "",
            ),
            (r#"{"spec":{"matrix":{"repeat":[1,2]},"sleep":{}}}"#, r#"spec.matrix["repeat"]: "#, "cannot be swept"),
            (
                r#"{"spec":{"matrix":{"sleep.durationMs.x":[1]},"sleep":{"durationMs":5}}}"#,
                r#"spec.matrix["sleep.durationMs.x"]"#,
                "not an object",
            ),
            (
                r#"{"spec":{"repeat":20000,"noop":{}}}"#,
                "spec.matrix: 1 combinations x repeat 20000 is more than 10000 jobs",
                "",
            ),
            (&big_sweep, "spec.matrix: 10000 jobs of 10.0 KiB each come to ", "at most 64.0 MiB is accepted"),
        ];
        for (json, starts, contains) in cases {
            let e = validate(&spec(json)).unwrap_err().to_string();
            assert!(e.starts_with(starts) && e.contains(contains), "got {e:?}, want {starts:?} … {contains:?}");
        }
    }
}
