//! What an agent's stream may send: any sequence of messages (each a length byte and a
//! protobuf `AgentMessage`, the first a hello) applied to the coordinator's state with
//! three jobs queued — never a panic, whatever the agent claims.
#![no_main]
use baton_coordinator::api::check_hello;
use baton_coordinator::record::NewJob;
use baton_coordinator::state::State;
use baton_proto::v1::agent_message::Kind;
use baton_proto::v1::{AgentMessage, Capabilities, Hello, JobSpec, SleepSpec, job_spec};
use prost::Message as _;
use std::time::{Duration, Instant};

fn messages(mut data: &[u8]) -> Vec<AgentMessage> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let (chunk, rest) = rest.split_at((len as usize).min(rest.len()));
        if let Ok(m) = AgentMessage::decode(chunk) {
            out.push(m);
        }
        data = rest;
    }
    out
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut state = State::restore(Vec::new(), Vec::new(), now);
    for i in 0..3 {
        let mut spec = JobSpec {
            kind: Some(job_spec::Kind::Sleep(SleepSpec { duration_ms: 10, fail: false })),
            ..Default::default()
        };
        baton_proto::spec::normalize(&mut spec);
        state.submit(NewJob { id: format!("job-{i}"), spec, ..Default::default() });
    }
    let mut messages = messages(data).into_iter();
    let hello = match messages.next() {
        Some(AgentMessage { kind: Some(Kind::Hello(h)) }) => h,
        _ => Hello {
            agent_id: "a".into(),
            slots: 2,
            capabilities: Some(Capabilities { job_kinds: vec!["sleep".into()], cpu_cores: 2, ..Default::default() }),
            ..Default::default()
        },
    };
    // What the API refuses before the state sees it.
    if check_hello(&hello).is_err() {
        return;
    }
    state.hello(&hello, now);
    state.schedule();
    for message in messages {
        state.agent_message(&hello.agent_id, message, now);
        state.schedule();
    }
    state.expire(now + Duration::from_secs(60), Duration::from_secs(10));
    state.schedule();
});
