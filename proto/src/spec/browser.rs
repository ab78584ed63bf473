//! Validation of `browser` specs (pure; runs on the coordinator at submit), and what a
//! browser job needs from an agent.

use super::{Check, SpecError};
use crate::v1::{
    BrowserSpec, BrowserStep, Locator, assert_step, browser_step, find_step, locator, mouse_click_step,
    mouse_move_step, wait_step,
};
use std::collections::HashMap;

pub const BROWSERS: [&str; 2] = ["chrome", "firefox"];
pub const MODES: [&str; 2] = ["cold", "warm"];
pub const MOUSE_BUTTONS: [&str; 3] = ["left", "right", "middle"];
/// Named keys a key chord may use (besides single characters), joined with `+`.
pub const KEY_NAMES: [&str; 24] = [
    "ctrl",
    "shift",
    "alt",
    "meta",
    "enter",
    "tab",
    "escape",
    "backspace",
    "delete",
    "space",
    "up",
    "down",
    "left",
    "right",
    "home",
    "end",
    "pageup",
    "pagedown",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "f12",
];
pub const MAX_STEPS: usize = 500;
pub const MAX_REPEAT: u32 = 1000;
pub const MAX_TIMEOUT_MS: u32 = 10 * 60 * 1000;
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;
pub const DEFAULT_WINDOW: (u32, u32) = (1280, 800);

const STEP_KINDS: &str =
    "open, setWindowSize, find, wait, assert, screenshot, script, typeText, keyChord, mouseMove, mouseClick";
const LOCATOR_RULE: &str = "exactly one of css, xpath, id, name, linkText is required";

/// What a browser job needs from an agent, so the coordinator only sends it to one that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrowserNeeds {
    /// "chrome" or "firefox".
    pub browser: String,
    /// A headed browser: the agent needs an X display.
    pub display: bool,
    /// OS keyboard and mouse steps: the agent must be started with desktop input enabled.
    pub desktop_input: bool,
}

pub fn requirements(spec: &BrowserSpec) -> BrowserNeeds {
    BrowserNeeds {
        browser: browser_name(spec).to_string(),
        display: !spec.headless.unwrap_or(true),
        desktop_input: spec.steps.iter().any(is_desktop_step),
    }
}

/// The browser a spec asks for, with the default filled in.
pub fn browser_name(spec: &BrowserSpec) -> &str {
    if spec.browser.is_empty() { "chrome" } else { &spec.browser }
}

/// The step kind's JSON name, as in spec files and reports.
pub fn step_kind_name(step: &BrowserStep) -> &'static str {
    use browser_step::Kind;
    match &step.kind {
        None => "none",
        Some(Kind::Open(_)) => "open",
        Some(Kind::SetWindowSize(_)) => "setWindowSize",
        Some(Kind::Find(_)) => "find",
        Some(Kind::Wait(_)) => "wait",
        Some(Kind::Assert(_)) => "assert",
        Some(Kind::Screenshot(_)) => "screenshot",
        Some(Kind::Script(_)) => "script",
        Some(Kind::TypeText(_)) => "typeText",
        Some(Kind::KeyChord(_)) => "keyChord",
        Some(Kind::MouseMove(_)) => "mouseMove",
        Some(Kind::MouseClick(_)) => "mouseClick",
    }
}

pub fn is_desktop_step(step: &BrowserStep) -> bool {
    use browser_step::Kind;
    matches!(step.kind, Some(Kind::TypeText(_) | Kind::KeyChord(_) | Kind::MouseMove(_) | Kind::MouseClick(_)))
}

/// The `${name}` references in a text, or the rule the text breaks.
pub fn variable_references(text: &str) -> Result<Vec<&str>, String> {
    let mut refs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unclosed ${ (write ${name})".into());
        };
        let name = &after[..end];
        if !is_variable_name(name) {
            return Err(format!("${{{name}}} is not a variable name (letters, digits and _)"));
        }
        refs.push(name);
        rest = &after[end + 1..];
    }
    Ok(refs)
}

fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces every `${name}` with its value from `values` (names were checked at submit).
pub fn substitute(text: &str, values: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        out.push_str(&rest[..start]);
        match values.get(&after[..end]) {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + 3 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Checks a chord such as "ctrl+shift+a"; the agent maps the names to OS keys.
pub fn check_key_chord(keys: &str) -> Result<Vec<&str>, String> {
    let parts: Vec<&str> = keys.split('+').map(str::trim).collect();
    for p in &parts {
        let single_char = p.chars().count() == 1;
        if !single_char && !KEY_NAMES.contains(&p.to_ascii_lowercase().as_str()) {
            return Err(format!("unknown key {p:?}: use a single character or one of {}", KEY_NAMES.join(", ")));
        }
    }
    Ok(parts)
}

pub fn validate(spec: &BrowserSpec) -> Check {
    let at = |f: &str| format!("spec.browser.{f}");
    if !spec.browser.is_empty() && !BROWSERS.contains(&spec.browser.as_str()) {
        return Err(SpecError::new(at("browser"), format!("must be one of {}", BROWSERS.join(", "))));
    }
    if !spec.mode.is_empty() && !MODES.contains(&spec.mode.as_str()) {
        return Err(SpecError::new(at("mode"), format!("must be one of {}", MODES.join(", "))));
    }
    if spec.repeat > MAX_REPEAT {
        return Err(SpecError::new(at("repeat"), format!("must be at most {MAX_REPEAT}")));
    }
    if spec.default_timeout_ms > MAX_TIMEOUT_MS {
        return Err(SpecError::new(at("defaultTimeoutMs"), format!("must be at most {MAX_TIMEOUT_MS} (10 min)")));
    }
    if let Some(w) = &spec.window_size {
        check_window(&at("windowSize"), w.width, w.height)?;
    }
    for (name, field) in
        spec.variables.keys().map(|k| (k, "variables")).chain(spec.secrets.keys().map(|k| (k, "secrets")))
    {
        if !is_variable_name(name) {
            return Err(SpecError::new(at(&format!("{field}[{name:?}]")), "names are letters, digits and _"));
        }
    }
    if let Some(both) = spec.variables.keys().find(|k| spec.secrets.contains_key(*k)) {
        return Err(SpecError::new(at(&format!("secrets[{both:?}]")), "is also a variable: use one name once"));
    }
    if spec.steps.is_empty() {
        return Err(SpecError::new(at("steps"), "must not be empty"));
    }
    if spec.steps.len() > MAX_STEPS {
        return Err(SpecError::new(at("steps"), format!("must have at most {MAX_STEPS} steps")));
    }
    let headless = spec.headless.unwrap_or(true);
    for (i, step) in spec.steps.iter().enumerate() {
        let field = at(&format!("steps[{i}]"));
        if step.name.chars().count() > 200 {
            return Err(SpecError::new(format!("{field}.name"), "must be at most 200 characters"));
        }
        if is_desktop_step(step) && headless {
            return Err(SpecError::new(
                format!("{field}.{}", step_kind_name(step)),
                "desktop input needs a headed browser: set spec.browser.headless to false",
            ));
        }
        validate_step(spec, &field, step)?;
    }
    Ok(())
}

fn check_window(field: &str, width: u32, height: u32) -> Check {
    if !(100..=10_000).contains(&width) || !(100..=10_000).contains(&height) {
        return Err(SpecError::new(field, "width and height must be between 100 and 10000"));
    }
    Ok(())
}

fn validate_step(spec: &BrowserSpec, field: &str, step: &BrowserStep) -> Check {
    use browser_step::Kind;
    let text = |name: &str, value: &str| check_text(spec, &format!("{field}.{name}"), value);
    let timeout = |name: &str, ms: u32| check_timeout(&format!("{field}.{name}.timeoutMs"), ms);
    match &step.kind {
        None => Err(SpecError::new(field, format!("exactly one step kind is required: one of {STEP_KINDS}"))),
        Some(Kind::Open(o)) => {
            text("open.url", &o.url)?;
            let url = substitute(&o.url, &all_values(spec));
            check_url(&format!("{field}.open.url"), &url)
        }
        Some(Kind::SetWindowSize(w)) => check_window(&format!("{field}.setWindowSize"), w.width, w.height),
        Some(Kind::Find(f)) => {
            check_locator(spec, &format!("{field}.find.locator"), f.locator.as_ref())?;
            timeout("find", f.timeout_ms)?;
            let flag = |name: &str, on: bool| {
                if on { Ok(()) } else { Err(SpecError::new(format!("{field}.find.{name}"), "must be true when given")) }
            };
            match &f.action {
                None => Err(SpecError::new(
                    format!("{field}.find"),
                    "exactly one action is required: one of type, clear, click, select, submit",
                )),
                Some(find_step::Action::Type(t)) => text("find.type", t),
                Some(find_step::Action::Select(t)) => text("find.select", t),
                Some(find_step::Action::Clear(on)) => flag("clear", *on),
                Some(find_step::Action::Click(on)) => flag("click", *on),
                Some(find_step::Action::Submit(on)) => flag("submit", *on),
            }
        }
        Some(Kind::Wait(w)) => {
            timeout("wait", w.timeout_ms)?;
            match &w.condition {
                None => Err(SpecError::new(
                    format!("{field}.wait"),
                    "exactly one condition is required: one of visible, clickable, textPresent, urlMatches, js",
                )),
                Some(wait_step::Condition::Visible(l)) => {
                    check_locator(spec, &format!("{field}.wait.visible"), Some(l))
                }
                Some(wait_step::Condition::Clickable(l)) => {
                    check_locator(spec, &format!("{field}.wait.clickable"), Some(l))
                }
                Some(wait_step::Condition::TextPresent(t)) => {
                    non_empty_text(spec, &format!("{field}.wait.textPresent"), t)
                }
                Some(wait_step::Condition::UrlMatches(t)) => {
                    non_empty_text(spec, &format!("{field}.wait.urlMatches"), t)
                }
                Some(wait_step::Condition::Js(t)) => non_empty_text(spec, &format!("{field}.wait.js"), t),
            }
        }
        Some(Kind::Assert(a)) => match &a.check {
            None => Err(SpecError::new(format!("{field}.assert"), "exactly one of text, title, url is required")),
            Some(assert_step::Check::Text(t)) => {
                check_locator(spec, &format!("{field}.assert.text.locator"), t.locator.as_ref())?;
                text("assert.text.contains", &t.contains)
            }
            Some(assert_step::Check::Title(t)) => text("assert.title", t),
            Some(assert_step::Check::Url(t)) => text("assert.url", t),
        },
        Some(Kind::Screenshot(s)) => {
            let refs =
                variable_references(&s.name).map_err(|r| SpecError::new(format!("{field}.screenshot.name"), r))?;
            if refs.iter().any(|r| spec.secrets.contains_key(*r)) {
                return Err(SpecError::new(format!("{field}.screenshot.name"), "must not reference a secret"));
            }
            text("screenshot.name", &s.name)
        }
        Some(Kind::Script(s)) => non_empty_text(spec, &format!("{field}.script.script"), &s.script),
        Some(Kind::TypeText(t)) => {
            if t.locator.is_some() {
                check_locator(spec, &format!("{field}.typeText.locator"), t.locator.as_ref())?;
            }
            timeout("typeText", t.timeout_ms)?;
            non_empty_text(spec, &format!("{field}.typeText.text"), &t.text)
        }
        Some(Kind::KeyChord(k)) => {
            check_key_chord(&k.keys).map(|_| ()).map_err(|r| SpecError::new(format!("{field}.keyChord.keys"), r))
        }
        Some(Kind::MouseMove(m)) => match &m.target {
            None => Err(SpecError::new(format!("{field}.mouseMove"), "exactly one of element, point is required")),
            Some(mouse_move_step::Target::Element(l)) => {
                check_locator(spec, &format!("{field}.mouseMove.element"), Some(l))
            }
            Some(mouse_move_step::Target::Point(_)) => Ok(()),
        },
        Some(Kind::MouseClick(m)) => {
            if !m.button.is_empty() && !MOUSE_BUTTONS.contains(&m.button.as_str()) {
                return Err(SpecError::new(
                    format!("{field}.mouseClick.button"),
                    format!("must be one of {}", MOUSE_BUTTONS.join(", ")),
                ));
            }
            match &m.target {
                None => Err(SpecError::new(format!("{field}.mouseClick"), "exactly one of element, point is required")),
                Some(mouse_click_step::Target::Element(l)) => {
                    check_locator(spec, &format!("{field}.mouseClick.element"), Some(l))
                }
                Some(mouse_click_step::Target::Point(_)) => Ok(()),
            }
        }
    }
}

fn all_values(spec: &BrowserSpec) -> HashMap<String, String> {
    spec.variables.iter().chain(spec.secrets.iter()).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn check_timeout(field: &str, ms: u32) -> Check {
    if ms > MAX_TIMEOUT_MS {
        return Err(SpecError::new(field, format!("must be at most {MAX_TIMEOUT_MS} (10 min)")));
    }
    Ok(())
}

fn non_empty_text(spec: &BrowserSpec, field: &str, value: &str) -> Check {
    if value.trim().is_empty() {
        return Err(SpecError::new(field, "must not be empty"));
    }
    check_text(spec, field, value)
}

/// Every `${name}` must name a variable or a secret.
fn check_text(spec: &BrowserSpec, field: &str, value: &str) -> Check {
    for name in variable_references(value).map_err(|r| SpecError::new(field, r))? {
        if !spec.variables.contains_key(name) && !spec.secrets.contains_key(name) {
            return Err(SpecError::new(
                field,
                format!("unknown variable ${{{name}}}: define it in spec.browser.variables or spec.browser.secrets"),
            ));
        }
    }
    Ok(())
}

fn check_locator(spec: &BrowserSpec, field: &str, locator: Option<&Locator>) -> Check {
    let Some(by) = locator.and_then(|l| l.by.as_ref()) else {
        return Err(SpecError::new(field, LOCATOR_RULE));
    };
    let (name, value) = match by {
        locator::By::Css(v) => ("css", v),
        locator::By::Xpath(v) => ("xpath", v),
        locator::By::Id(v) => ("id", v),
        locator::By::Name(v) => ("name", v),
        locator::By::LinkText(v) => ("linkText", v),
    };
    non_empty_text(spec, &format!("{field}.{name}"), value)
}

/// http(s) URLs with a host, or about:blank.
fn check_url(field: &str, url: &str) -> Check {
    if url == "about:blank" {
        return Ok(());
    }
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        return Err(SpecError::new(field, format!("{url:?} is not an http:// or https:// URL")));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || url.chars().any(char::is_whitespace) {
        return Err(SpecError::new(field, format!("{url:?} is not a valid URL: it needs a host and no spaces")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_request;
    use crate::v1::job_spec;

    fn spec(json: &str) -> BrowserSpec {
        let req = parse_request(&format!(r#"{{"spec":{{"browser":{json}}}}}"#)).unwrap();
        match req.spec.unwrap().kind {
            Some(job_spec::Kind::Browser(b)) => b,
            other => panic!("not a browser spec: {other:?}"),
        }
    }

    fn error(json: &str) -> String {
        validate(&spec(json)).unwrap_err().to_string()
    }

    #[test]
    fn login_flow_is_valid() {
        let s = spec(
            r#"{"variables":{"base":"http://127.0.0.1:8088"},"secrets":{"password":"hunter2"},"steps":[
            {"open":{"url":"${base}/login"}},
            {"find":{"locator":{"xpath":"//input[@id=\"username\"]"},"type":"alice"}},
            {"find":{"locator":{"xpath":"//input[@type=\"password\"]"},"type":"${password}"}},
            {"name":"click Login","find":{"locator":{"xpath":"//button[text()=\"Login\"]"},"click":true}},
            {"wait":{"visible":{"id":"dashboard"},"timeoutMs":5000}}]}"#,
        );
        validate(&s).unwrap();
        assert_eq!(requirements(&s), BrowserNeeds { browser: "chrome".into(), display: false, desktop_input: false });
    }

    #[test]
    fn rules_name_the_field() {
        let cases = [
            (r#"{"steps":[]}"#, "spec.browser.steps: must not be empty"),
            (
                r#"{"browser":"safari","steps":[{"open":{"url":"http://a"}}]}"#,
                "spec.browser.browser: must be one of chrome, firefox",
            ),
            (r#"{"mode":"hot","steps":[{"open":{"url":"http://a"}}]}"#, "spec.browser.mode: must be one of cold, warm"),
            (r#"{"steps":[{"name":"x"}]}"#, "spec.browser.steps[0]: exactly one step kind is required"),
            (r#"{"steps":[{"open":{"url":"ftp://a"}}]}"#, "spec.browser.steps[0].open.url: \"ftp://a\" is not an http"),
            (
                r#"{"steps":[{"open":{"url":"http:///x"}}]}"#,
                "spec.browser.steps[0].open.url: \"http:///x\" is not a valid URL",
            ),
            (
                r#"{"steps":[{"open":{"url":"http://a"}},{"open":{"url":"http://a"}},{"find":{"locator":{},"click":true}}]}"#,
                "spec.browser.steps[2].find.locator: exactly one of css, xpath, id, name, linkText is required",
            ),
            (
                r#"{"steps":[{"find":{"locator":{"css":".a"}}}]}"#,
                "spec.browser.steps[0].find: exactly one action is required",
            ),
            (
                r#"{"steps":[{"find":{"locator":{"css":".a"},"click":false}}]}"#,
                "spec.browser.steps[0].find.click: must be true",
            ),
            (
                r#"{"steps":[{"find":{"locator":{"css":""},"click":true}}]}"#,
                "spec.browser.steps[0].find.locator.css: must not be empty",
            ),
            (
                r#"{"variables":{"password":"x"},"steps":[{"find":{"locator":{"id":"p"},"type":"${pasword}"}}]}"#,
                "spec.browser.steps[0].find.type: unknown variable ${pasword}",
            ),
            (
                r#"{"steps":[{"find":{"locator":{"id":"p"},"type":"${oops"}}]}"#,
                "spec.browser.steps[0].find.type: unclosed ${",
            ),
            (
                r#"{"steps":[{"wait":{"timeoutMs":5}}]}"#,
                "spec.browser.steps[0].wait: exactly one condition is required",
            ),
            (
                r#"{"steps":[{"wait":{"js":"true","timeoutMs":9999999}}]}"#,
                "spec.browser.steps[0].wait.timeoutMs: must be at most",
            ),
            (
                r#"{"steps":[{"typeText":{"text":"a"}}]}"#,
                "spec.browser.steps[0].typeText: desktop input needs a headed browser",
            ),
            (
                r#"{"headless":false,"steps":[{"keyChord":{"keys":"ctrl+bogus"}}]}"#,
                "spec.browser.steps[0].keyChord.keys: unknown key \"bogus\"",
            ),
            (
                r#"{"secrets":{"pw":"x"},"steps":[{"screenshot":{"name":"shot-${pw}"}}]}"#,
                "spec.browser.steps[0].screenshot.name: must not reference a secret",
            ),
            (
                r#"{"windowSize":{"width":5,"height":5},"steps":[{"open":{"url":"http://a"}}]}"#,
                "spec.browser.windowSize: width and height",
            ),
            (
                r#"{"variables":{"a":"1"},"secrets":{"a":"2"},"steps":[{"open":{"url":"http://a"}}]}"#,
                "spec.browser.secrets[\"a\"]: is also a variable",
            ),
        ];
        for (json, want) in cases {
            let got = error(json);
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn desktop_steps_need_display_and_input() {
        let s = spec(r#"{"headless":false,"steps":[{"mouseClick":{"element":{"id":"b"}}}]}"#);
        validate(&s).unwrap();
        assert_eq!(requirements(&s), BrowserNeeds { browser: "chrome".into(), display: true, desktop_input: true });
    }

    #[test]
    fn substitution_replaces_known_names_only() {
        let values: HashMap<String, String> = [("a".to_string(), "1".to_string())].into();
        assert_eq!(substitute("x${a}y${b}z", &values), "x1y${b}z");
        assert_eq!(variable_references("${a}-${b_2}").unwrap(), vec!["a", "b_2"]);
    }
}
