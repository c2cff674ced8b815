//! The upstream client against servers on loopback that answer well, or badly in each of
//! the ways a real one can: an error status, a malformed stream, a stream cut short, a
//! stall, a replica that refuses connections. Every generation must end, with its answer
//! or with an error, and a client that goes away must end the upstream request.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use pensieve_engine::{
    EngineError, EngineMetrics, FinishReason, GenerateRequest, GenerationEvent, Message, Role,
};
use pensieve_upstream::{Endpoint, Relayed, Upstream, UpstreamConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What a server sends: pieces of the body with a pause before each, then the body ends
/// (or stalls forever with `stall`).
#[derive(Clone)]
struct Script {
    status: StatusCode,
    pieces: Vec<(u64, String)>,
    stall: bool,
    /// Set when the server's side of the body is dropped (the client went away).
    dropped: Arc<AtomicBool>,
}

impl Script {
    fn ok(pieces: &[&str]) -> Self {
        Script {
            status: StatusCode::OK,
            pieces: pieces.iter().map(|p| (0, (*p).to_owned())).collect(),
            stall: false,
            dropped: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Tells the test when the response body is dropped.
struct Watch(Arc<AtomicBool>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn serve(script: Script) -> String {
    serve_on(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        script,
    )
}

/// Serves `script` on `listener` (answering `/v1/chat/completions`; any other path, such as
/// the health checks' `/v1/models`, is a 404).
fn serve_on(listener: tokio::net::TcpListener, script: Script) -> String {
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let script = script.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
                let watch = Watch(script.dropped.clone());
                tokio::spawn(async move {
                    let _watch = watch;
                    for (pause, piece) in script.pieces {
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        if tx.send(Ok(Bytes::from(piece))).await.is_err() {
                            return;
                        }
                    }
                    if script.stall {
                        // Until the client hangs up.
                        tx.closed().await;
                    }
                });
                Response::builder()
                    .status(script.status)
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(ReceiverStream::new(rx)))
                    .unwrap()
            }
        }),
    );
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

fn chunk(delta: &str) -> String {
    format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":null}}]}}\n\n")
}

const FINISH: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

fn config(replicas: Vec<String>) -> UpstreamConfig {
    let mut c = UpstreamConfig::new(replicas, "served-model");
    c.first_byte_timeout = Duration::from_secs(5);
    c.idle_timeout = Duration::from_millis(400);
    c
}

fn in_flight(upstream: &Upstream) -> Vec<usize> {
    upstream.replicas().iter().map(|r| r.in_flight).collect()
}

/// Every replica's places given back, within a second.
async fn wait_until_places_are_back(upstream: &Upstream) {
    for _ in 0..50 {
        if in_flight(upstream).iter().all(|&n| n == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "a request's place was not given back: {:?}",
        in_flight(upstream)
    );
}

fn hello() -> GenerateRequest {
    GenerateRequest::new("claude-opus-5-5", vec![Message::text(Role::User, "Hi")], 16)
}

/// All events of one generation, with a deadline: nothing may hang.
async fn run(upstream: &Upstream) -> Vec<GenerationEvent> {
    let mut generation = upstream.submit(&hello()).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => panic!("the generation hung after {out:?}"),
            event = generation.events.recv() => match event {
                Some(e) => {
                    let last = matches!(e, GenerationEvent::Done(_) | GenerationEvent::Failed(_));
                    out.push(e);
                    if last {
                        return out;
                    }
                }
                None => panic!("the events ended without Done or Failed: {out:?}"),
            }
        }
    }
}

fn failure(events: &[GenerationEvent]) -> (u16, String) {
    match events.last() {
        Some(GenerationEvent::Failed(EngineError::Upstream { status, message })) => {
            (*status, message.clone())
        }
        other => panic!("expected an upstream failure, got {other:?}"),
    }
}

#[tokio::test]
async fn an_answer_streams_through_with_its_usage() {
    let base = serve(Script::ok(&[
        &chunk("{\"role\":\"assistant\",\"content\":\"\"}"),
        &chunk("{\"content\":\"Hel\"}"),
        &chunk("{\"content\":\"lo\"}"),
        FINISH,
        USAGE,
        DONE,
    ]))
    .await;
    let metrics = Arc::new(EngineMetrics::new());
    let upstream = Upstream::new(config(vec![base.clone()]), metrics.clone()).unwrap();
    let events = run(&upstream).await;
    let text: String = events
        .iter()
        .filter_map(|e| match e {
            GenerationEvent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Hello");
    let Some(GenerationEvent::Done(done)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(done.reason, FinishReason::EndOfTurn);
    assert_eq!(
        (done.usage.prompt_tokens, done.usage.cached_prompt_tokens),
        (12, 8)
    );
    assert_eq!(in_flight(&upstream), vec![0], "the place is given back");
    // The replica's counters.
    let text = metrics.encode();
    for line in [
        format!("pensieve_upstream_requests_total{{replica=\"{base}\",outcome=\"ok\"}} 1"),
        format!("pensieve_upstream_prompt_tokens_total{{replica=\"{base}\"}} 12"),
        format!("pensieve_upstream_cached_prompt_tokens_total{{replica=\"{base}\"}} 8"),
        format!("pensieve_upstream_time_to_first_token_seconds_count{{replica=\"{base}\"}} 1"),
        format!("pensieve_upstream_in_flight{{replica=\"{base}\"}} 0"),
        format!("pensieve_upstream_up{{replica=\"{base}\"}} 1"),
        "pensieve_cached_prompt_tokens_total 8".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
}

#[tokio::test]
async fn an_error_status_carries_the_upstreams_message() {
    let mut script = Script::ok(&["{\"error\":{\"message\":\"This model's maximum context length is 4096 tokens\",\"code\":400}}"]);
    script.status = StatusCode::BAD_REQUEST;
    let upstream = Upstream::new(config(vec![serve(script).await]), Arc::default()).unwrap();
    let (status, message) = failure(&run(&upstream).await);
    assert_eq!(status, 400);
    assert!(message.contains("maximum context length"), "{message}");

    let mut script = Script::ok(&["upstream exploded"]);
    script.status = StatusCode::INTERNAL_SERVER_ERROR;
    let upstream = Upstream::new(config(vec![serve(script).await]), Arc::default()).unwrap();
    assert_eq!(
        failure(&run(&upstream).await),
        (500, "upstream exploded".into())
    );
}

#[tokio::test]
async fn a_malformed_or_cut_stream_ends_with_an_error() {
    let upstream = Upstream::new(
        config(vec![
            serve(Script::ok(&[
                &chunk("{\"content\":\"Hi\"}"),
                "data: {\"choices\": [nope\n\n",
            ]))
            .await,
        ]),
        Arc::default(),
    )
    .unwrap();
    let events = run(&upstream).await;
    assert!(matches!(&events[0], GenerationEvent::Text(t) if t == "Hi"));
    let (status, message) = failure(&events);
    assert_eq!(status, 502);
    assert!(message.contains("malformed"), "{message}");

    // The body ends before the answer did.
    let upstream = Upstream::new(
        config(vec![
            serve(Script::ok(&[&chunk("{\"content\":\"Hi\"}")])).await,
        ]),
        Arc::default(),
    )
    .unwrap();
    let (status, message) = failure(&run(&upstream).await);
    assert_eq!(status, 502);
    assert!(message.contains("before the answer ended"), "{message}");

    // An error event in the stream.
    let upstream = Upstream::new(
        config(vec![
            serve(Script::ok(&[
                &chunk("{\"content\":\"Hi\"}"),
                "data: {\"error\":{\"message\":\"out of memory\"}}\n\n",
            ]))
            .await,
        ]),
        Arc::default(),
    )
    .unwrap();
    let (status, message) = failure(&run(&upstream).await);
    assert_eq!((status, message.as_str()), (502, "out of memory"));
}

#[tokio::test]
async fn a_stalled_stream_times_out_and_is_hung_up_on() {
    let mut script = Script::ok(&[&chunk("{\"content\":\"Hi\"}")]);
    script.stall = true;
    let dropped = script.dropped.clone();
    let upstream = Upstream::new(config(vec![serve(script).await]), Arc::default()).unwrap();
    let (status, message) = failure(&run(&upstream).await);
    assert_eq!(status, 504);
    assert!(message.contains("within 0.4 s"), "{message}");
    wait_for(&dropped).await;
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_upstream_request() {
    let mut script = Script::ok(&[&chunk("{\"content\":\"Hi\"}")]);
    script.stall = true;
    let dropped = script.dropped.clone();
    let mut c = config(vec![serve(script).await]);
    c.idle_timeout = Duration::from_secs(60);
    let upstream = Upstream::new(c, Arc::default()).unwrap();
    let mut generation = upstream.submit(&hello()).unwrap();
    assert!(matches!(
        generation.events.recv().await,
        Some(GenerationEvent::Text(_))
    ));
    drop(generation);
    wait_for(&dropped).await;
    wait_until_places_are_back(&upstream).await;
}

#[tokio::test]
async fn a_replica_that_refuses_connections_is_passed_over() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", listener.local_addr().unwrap())
    };
    let good = serve(Script::ok(&[&chunk("{\"content\":\"Hi\"}"), FINISH, DONE])).await;
    let upstream = Upstream::new(config(vec![closed.clone(), good]), Arc::default()).unwrap();
    for _ in 0..3 {
        let events = run(&upstream).await;
        assert!(
            matches!(events.last(), Some(GenerationEvent::Done(_))),
            "{events:?}"
        );
    }
    let up: Vec<bool> = upstream.replicas().iter().map(|r| r.up).collect();
    assert_eq!(up, vec![false, true]);

    // With no replica left, a clean error.
    let upstream = Upstream::new(config(vec![closed]), Arc::default()).unwrap();
    assert_eq!(failure(&run(&upstream).await).0, 503);
}

#[tokio::test]
async fn a_replica_that_comes_back_is_used_again_after_its_next_health_check() {
    // A port nothing listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let late = format!("http://127.0.0.1:{port}/v1");
    let good = serve(Script::ok(&[&chunk("{\"content\":\"Hi\"}"), FINISH, DONE])).await;
    let mut c = config(vec![late.clone(), good]);
    c.retry_after = Duration::from_secs(600);
    c.health_interval = Duration::from_millis(100);
    let metrics = Arc::new(EngineMetrics::new());
    let upstream = Upstream::new(c, metrics.clone()).unwrap();
    upstream.spawn_health_checks();
    let up = |u: &Upstream| u.replicas().iter().map(|r| r.up).collect::<Vec<_>>();
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = up(&upstream);
        if seen == [false, true] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        seen,
        [false, true],
        "the checks find the first replica down"
    );
    assert!(metrics
        .encode()
        .contains(&format!("pensieve_upstream_up{{replica=\"{late}\"}} 0")));

    // It comes up: the next check puts it back, long before retry_after.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    serve_on(
        listener,
        Script::ok(&[&chunk("{\"content\":\"Hi\"}"), FINISH, DONE]),
    );
    for _ in 0..100 {
        if up(&upstream) == [true, true] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the replica is still left out: {:?}", upstream.replicas());
}

#[tokio::test]
async fn requests_wait_for_a_place_on_a_full_replica_and_past_the_queue_are_overloaded() {
    // Each answer takes 300 ms; the replica takes one request at a time, one more may wait.
    let mut script = Script::ok(&[&chunk("{\"content\":\"Hi\"}"), FINISH, DONE]);
    script.pieces[0].0 = 300;
    let mut c = config(vec![serve(script).await]);
    c.per_replica = 1;
    c.queue = 1;
    let upstream = Upstream::new(c, Arc::default()).unwrap();
    let first = tokio::spawn({
        let upstream = upstream.clone();
        async move { run(&upstream).await }
    });
    until(|| in_flight(&upstream) == [1]).await;
    let second = tokio::spawn({
        let upstream = upstream.clone();
        async move { run(&upstream).await }
    });
    until(|| upstream.waiting() == 1).await;
    // The queue is full: the third is turned away at once.
    let third = run(&upstream).await;
    assert!(
        matches!(
            third.last(),
            Some(GenerationEvent::Failed(EngineError::Overloaded { .. }))
        ),
        "{third:?}"
    );
    // The waiting one gets the place when the first ends.
    for done in [first.await.unwrap(), second.await.unwrap()] {
        assert!(
            matches!(done.last(), Some(GenerationEvent::Done(_))),
            "{done:?}"
        );
    }
    assert_eq!((upstream.waiting(), in_flight(&upstream)), (0, vec![0]));
}

async fn until(condition: impl Fn() -> bool) {
    for _ in 0..100 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition never held");
}

async fn wait_for(flag: &AtomicBool) {
    for _ in 0..100 {
        if flag.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server still holds the request");
}

/// Against a real OpenAI-compatible server at `PENSIEVE_UPSTREAM_URL` (e.g. a second
/// Pensieve, `http://127.0.0.1:7821/v1`): `cargo test -p pensieve-upstream -- --ignored`.
/// The end-to-end suites will drive this through `pensieve serve --upstream`.
#[tokio::test]
#[ignore = "needs a server at PENSIEVE_UPSTREAM_URL"]
async fn a_real_server_answers_text_and_a_tool_call() {
    let base = std::env::var("PENSIEVE_UPSTREAM_URL").expect("PENSIEVE_UPSTREAM_URL");
    // A first request with tools builds its grammars: seconds on a small CPU.
    let upstream = Upstream::new(
        UpstreamConfig::new(vec![base], "served-model"),
        Arc::default(),
    )
    .unwrap();
    let events = run(&upstream).await;
    let Some(GenerationEvent::Done(done)) = events.last() else {
        panic!("{events:?}")
    };
    assert!(
        done.usage.prompt_tokens > 0 && done.usage.completion_tokens > 0,
        "{done:?}"
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, GenerationEvent::Text(t) if !t.is_empty())));

    let mut request = hello();
    request.messages = vec![Message::text(Role::User, "What is the weather in Paris?")];
    request.max_tokens = 128;
    request.tools.push(pensieve_engine::ToolSpec {
        name: "get_weather".into(),
        description: Some("The weather in a city now.".into()),
        parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    });
    request.tool_choice = pensieve_engine::ToolChoice::Named("get_weather".into());
    let mut generation = upstream.submit(&request).unwrap();
    let mut arguments = String::new();
    let mut started = None;
    while let Some(event) = generation.events.recv().await {
        match event {
            GenerationEvent::ToolCallStart { name } => started = Some(name),
            GenerationEvent::ToolCallArguments(a) => arguments.push_str(&a),
            GenerationEvent::Done(done) => {
                assert_eq!(done.reason, FinishReason::ToolUse);
                break;
            }
            GenerationEvent::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert_eq!(started.as_deref(), Some("get_weather"));
    let args: serde_json::Value = serde_json::from_str(&arguments).unwrap();
    assert!(args["city"].is_string(), "{args}");
}

/// Everything a relayed request's stream yields, with a deadline: nothing may hang.
async fn relay_all(
    upstream: &Upstream,
    stream: bool,
) -> Result<(String, Option<EngineError>), EngineError> {
    let body = serde_json::json!({"model": "gpt-x", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]});
    let relayed = upstream.relay(Endpoint::ChatCompletions, body, 1).await?;
    let mut pieces = match relayed {
        Relayed::Whole(bytes) => return Ok((String::from_utf8_lossy(&bytes).into_owned(), None)),
        Relayed::Stream(pieces) => pieces,
    };
    let mut text = String::new();
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => panic!("the relayed stream hung after {text:?}"),
            piece = pieces.recv() => match piece {
                Some(Ok(bytes)) => text.push_str(&String::from_utf8_lossy(&bytes)),
                Some(Err(e)) => {
                    assert!(pieces.recv().await.is_none(), "an error is the stream's last item");
                    return Ok((text, Some(e)));
                }
                None => return Ok((text, None)),
            }
        }
    }
}

#[tokio::test]
async fn a_relayed_stream_comes_through_byte_for_byte_with_its_usage_counted() {
    let pieces = [
        chunk("{\"content\":\"Hi\"}"),
        FINISH.into(),
        USAGE.into(),
        DONE.into(),
    ];
    let script = Script::ok(&pieces.iter().map(String::as_str).collect::<Vec<_>>());
    let base = serve(script).await;
    let metrics = Arc::new(EngineMetrics::new());
    let upstream = Upstream::new(config(vec![base.clone()]), metrics.clone()).unwrap();
    let (text, error) = relay_all(&upstream, true).await.unwrap();
    assert_eq!(text, pieces.concat());
    assert!(error.is_none());
    let exposition = metrics.encode();
    for line in [
        format!("pensieve_upstream_requests_total{{replica=\"{base}\",outcome=\"ok\"}} 1"),
        format!("pensieve_upstream_prompt_tokens_total{{replica=\"{base}\"}} 12"),
        format!("pensieve_upstream_cached_prompt_tokens_total{{replica=\"{base}\"}} 8"),
        format!("pensieve_upstream_time_to_first_token_seconds_count{{replica=\"{base}\"}} 1"),
    ] {
        assert!(exposition.contains(&line), "{line} in:\n{exposition}");
    }
    assert_eq!(in_flight(&upstream), vec![0]);

    // Not streamed: the whole body, as it came.
    let script = Script::ok(&["{\"choices\":[{\"message\":{\"content\":\"Hi\"}}]}"]);
    let upstream = Upstream::new(config(vec![serve(script).await]), Arc::default()).unwrap();
    let (text, error) = relay_all(&upstream, false).await.unwrap();
    assert_eq!(text, "{\"choices\":[{\"message\":{\"content\":\"Hi\"}}]}");
    assert!(error.is_none());
}

#[tokio::test]
async fn a_relayed_stream_that_is_cut_malformed_or_stalled_ends_with_an_error() {
    let cut = Script::ok(&[&chunk("{\"content\":\"Hi\"}")]);
    let upstream = Upstream::new(config(vec![serve(cut).await]), Arc::default()).unwrap();
    let (text, error) = relay_all(&upstream, true).await.unwrap();
    assert_eq!(text, chunk("{\"content\":\"Hi\"}"));
    assert!(
        matches!(error, Some(EngineError::Upstream { status: 502, message }) if message.contains("before the answer ended"))
    );

    let mut stalled = Script::ok(&[&chunk("{\"content\":\"Hi\"}")]);
    stalled.stall = true;
    let dropped = stalled.dropped.clone();
    let upstream = Upstream::new(config(vec![serve(stalled).await]), Arc::default()).unwrap();
    let (_, error) = relay_all(&upstream, true).await.unwrap();
    assert!(
        matches!(error, Some(EngineError::Upstream { status: 504, .. })),
        "{error:?}"
    );
    wait_for(&dropped).await;
    assert_eq!(in_flight(&upstream), vec![0]);

    let mut failing = Script::ok(&["{\"error\":{\"message\":\"model not loaded\"}}"]);
    failing.status = StatusCode::SERVICE_UNAVAILABLE;
    let upstream = Upstream::new(config(vec![serve(failing).await]), Arc::default()).unwrap();
    let e = relay_all(&upstream, true).await.err();
    assert_eq!(
        e,
        Some(EngineError::Upstream {
            status: 503,
            message: "model not loaded".into()
        })
    );
}

#[tokio::test]
async fn a_relay_whose_client_goes_away_ends_the_upstream_request() {
    let mut script = Script::ok(&[&chunk("{\"content\":\"Hi\"}")]);
    script.stall = true;
    let dropped = script.dropped.clone();
    let mut c = config(vec![serve(script).await]);
    c.idle_timeout = Duration::from_secs(60);
    let upstream = Upstream::new(c, Arc::default()).unwrap();
    let body = serde_json::json!({"stream": true, "messages": []});
    let Relayed::Stream(mut pieces) = upstream
        .relay(Endpoint::ChatCompletions, body, 1)
        .await
        .unwrap()
    else {
        panic!("a stream was asked for");
    };
    assert!(matches!(pieces.recv().await, Some(Ok(_))));
    drop(pieces);
    wait_for(&dropped).await;
    wait_until_places_are_back(&upstream).await;
}
