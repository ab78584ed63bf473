//! One trace per job in a real Jaeger: coordinator and agent spans, correctly parented.

use crate::backbone::{finished, request, sleep_spec};
use baton_tests::{Cluster, Jaeger};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_is_one_trace_with_coordinator_and_agent_spans() {
    let jaeger = Jaeger::start().await;
    let mut cluster = Cluster::start(&[], &jaeger.exporter_env()).await;
    cluster.add_agent("traced", 2, &[]);
    cluster.wait_agents(1).await;
    let mut client = cluster.jobs().await;

    // A client's traceparent is honoured: the job's trace continues the caller's.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut with_parent = tonic::Request::new(request(sleep_spec(20)));
    with_parent.metadata_mut().insert("traceparent", format!("00-{client_trace}-00f067aa0ba902b7-01").parse().unwrap());
    let mut ids = vec![client.submit_job(with_parent).await.unwrap().into_inner().id];
    for _ in 0..2 {
        ids.push(client.submit_job(request(sleep_spec(20))).await.unwrap().into_inner().id);
    }
    let mut trace_ids = Vec::new();
    for id in &ids {
        let job = finished(&cluster, id, Duration::from_secs(20)).await;
        assert_eq!(job.trace_id.len(), 32, "{job:?}");
        trace_ids.push(job.trace_id);
    }
    assert_eq!(trace_ids[0], client_trace);
    assert!(trace_ids[1] != trace_ids[2], "one trace per job");

    for (id, trace_id) in ids.iter().zip(&trace_ids) {
        let trace = jaeger.trace(trace_id, &["baton.v1.JobService/SubmitJob", "queue", "dispatch", "execute"]).await;
        let services: HashMap<String, String> = trace["processes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["serviceName"].as_str().unwrap().to_string()))
            .collect();
        let mut spans = HashMap::new();
        for s in trace["spans"].as_array().unwrap() {
            let parent = s["references"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["refType"] == "CHILD_OF")
                .map(|r| r["spanID"].as_str().unwrap().to_string());
            let service = services[s["processID"].as_str().unwrap()].clone();
            spans.insert(
                s["operationName"].as_str().unwrap().to_string(),
                (s["spanID"].as_str().unwrap().to_string(), parent, service),
            );
        }
        let submit = &spans["baton.v1.JobService/SubmitJob"];
        let queue = &spans["queue"];
        let dispatch = &spans["dispatch"];
        let execute = &spans["execute"];
        assert_eq!(submit.2, "baton-coordinator");
        assert_eq!((queue.1.as_ref(), queue.2.as_str()), (Some(&submit.0), "baton-coordinator"), "job {id}");
        assert_eq!((dispatch.1.as_ref(), dispatch.2.as_str()), (Some(&submit.0), "baton-coordinator"), "job {id}");
        assert_eq!((execute.1.as_ref(), execute.2.as_str()), (Some(&dispatch.0), "baton-agent"), "job {id}");
    }
}
