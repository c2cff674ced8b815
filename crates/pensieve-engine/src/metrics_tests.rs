//! Each recording method shows up in the rendered text under its name, labels and value.

use super::*;

/// The value of the sample line that starts with `series` (name plus labels, exactly).
fn sample(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

fn assert_sample(text: &str, series: &str, value: &str) {
    assert_eq!(
        sample(text, series).as_deref(),
        Some(value),
        "{series} in:\n{text}"
    );
}

#[test]
fn is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<EngineMetrics>();
}

#[test]
fn fresh_registry_reports_zeroes_and_ends_with_eof() {
    let text = EngineMetrics::new().encode();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_sample(&text, "pensieve_queue_depth", "0");
    assert_sample(&text, "pensieve_running_sequences", "0");
    assert_sample(&text, "pensieve_prompt_tokens_total", "0");
    assert_sample(&text, "pensieve_time_to_first_token_seconds_count", "0");
    for tier in ["context", "host", "disk"] {
        assert_sample(
            &text,
            &format!("pensieve_cache_bytes{{tier=\"{tier}\"}}"),
            "0",
        );
        assert_sample(
            &text,
            &format!("pensieve_cache_entries{{tier=\"{tier}\"}}"),
            "0",
        );
    }
    assert!(
        text.contains("# UNIT pensieve_cache_bytes bytes\n"),
        "{text}"
    );
}

#[test]
fn gauges_hold_the_last_value() {
    let m = EngineMetrics::new();
    m.set_queue_depth(7);
    m.set_queue_depth(3);
    m.set_running(2);
    let text = m.encode();
    assert!(
        text.contains("# TYPE pensieve_queue_depth gauge\n"),
        "{text}"
    );
    assert_sample(&text, "pensieve_queue_depth", "3");
    assert_sample(&text, "pensieve_running_sequences", "2");
}

#[test]
fn token_counters_accumulate() {
    let m = EngineMetrics::new();
    m.add_prompt_tokens(100);
    m.add_prompt_tokens(20);
    m.add_cached_prompt_tokens(64);
    m.add_cache_created_tokens(56);
    m.add_generated_tokens(9);
    m.add_generated_tokens(1);
    let text = m.encode();
    assert!(
        text.contains("# TYPE pensieve_generated_tokens counter\n"),
        "{text}"
    );
    assert_sample(&text, "pensieve_prompt_tokens_total", "120");
    assert_sample(&text, "pensieve_cached_prompt_tokens_total", "64");
    assert_sample(&text, "pensieve_cache_created_tokens_total", "56");
    assert_sample(&text, "pensieve_generated_tokens_total", "10");
}

#[test]
fn ttft_buckets_reach_minutes() {
    let m = EngineMetrics::new();
    m.observe_ttft(Duration::from_millis(500));
    m.observe_ttft(Duration::from_secs(90));
    m.observe_ttft(Duration::from_secs(3600));
    let text = m.encode();
    let name = "pensieve_time_to_first_token_seconds";
    assert!(
        text.contains(&format!("# TYPE {name} histogram\n")),
        "{text}"
    );
    assert!(text.contains(&format!("# UNIT {name} seconds\n")), "{text}");
    assert_sample(&text, &format!("{name}_count"), "3");
    assert_sample(&text, &format!("{name}_sum"), "3690.5");
    assert_sample(&text, &format!("{name}_bucket{{le=\"0.01\"}}"), "0");
    assert_sample(&text, &format!("{name}_bucket{{le=\"0.5\"}}"), "1");
    assert_sample(&text, &format!("{name}_bucket{{le=\"120.0\"}}"), "2");
    assert_sample(&text, &format!("{name}_bucket{{le=\"600.0\"}}"), "2");
    assert_sample(&text, &format!("{name}_bucket{{le=\"+Inf\"}}"), "3");
}

#[test]
fn inter_token_buckets_start_at_a_millisecond() {
    let m = EngineMetrics::new();
    m.observe_inter_token(Duration::from_micros(800));
    m.observe_inter_token(Duration::from_millis(40));
    let text = m.encode();
    let name = "pensieve_inter_token_latency_seconds";
    assert_sample(&text, &format!("{name}_count"), "2");
    assert_sample(&text, &format!("{name}_bucket{{le=\"0.001\"}}"), "1");
    assert_sample(&text, &format!("{name}_bucket{{le=\"0.05\"}}"), "2");
    assert_sample(&text, &format!("{name}_bucket{{le=\"5.0\"}}"), "2");
}

#[test]
fn cache_tiers_are_labelled_and_replaced() {
    let m = EngineMetrics::new();
    m.set_cache(CacheTier::Host, 3, 1 << 30);
    m.set_cache(CacheTier::Host, 2, 1 << 20);
    m.set_cache(CacheTier::Disk, 10, 5_000_000_000);
    let text = m.encode();
    assert_sample(&text, "pensieve_cache_entries{tier=\"host\"}", "2");
    assert_sample(&text, "pensieve_cache_bytes{tier=\"host\"}", "1048576");
    assert_sample(&text, "pensieve_cache_entries{tier=\"disk\"}", "10");
    assert_sample(&text, "pensieve_cache_bytes{tier=\"disk\"}", "5000000000");
    assert_sample(&text, "pensieve_cache_bytes{tier=\"context\"}", "0");
}

#[test]
fn requests_are_counted_by_route_and_status() {
    let m = EngineMetrics::new();
    m.record_request("/v1/messages", 200);
    m.record_request("/v1/messages", 200);
    m.record_request("/v1/messages", 401);
    m.record_request("unmatched", 404);
    let text = m.encode();
    assert!(
        text.contains("# TYPE pensieve_requests counter\n"),
        "{text}"
    );
    assert_sample(
        &text,
        "pensieve_requests_total{route=\"/v1/messages\",status=\"200\"}",
        "2",
    );
    assert_sample(
        &text,
        "pensieve_requests_total{route=\"/v1/messages\",status=\"401\"}",
        "1",
    );
    assert_sample(
        &text,
        "pensieve_requests_total{route=\"unmatched\",status=\"404\"}",
        "1",
    );
}

#[test]
fn request_durations_are_by_route() {
    let m = EngineMetrics::new();
    m.observe_request_duration("/v1/messages", Duration::from_secs(2));
    m.observe_request_duration("/health", Duration::from_millis(1));
    let text = m.encode();
    let name = "pensieve_request_duration_seconds";
    assert_sample(
        &text,
        &format!("{name}_count{{route=\"/v1/messages\"}}"),
        "1",
    );
    assert_sample(
        &text,
        &format!("{name}_sum{{route=\"/v1/messages\"}}"),
        "2.0",
    );
    assert_sample(
        &text,
        &format!("{name}_bucket{{le=\"2.5\",route=\"/v1/messages\"}}"),
        "1",
    );
    assert_sample(&text, &format!("{name}_count{{route=\"/health\"}}"), "1");
}
