//! API-key checking: `x-api-key: K` or `Authorization: Bearer K`.

use axum::http::HeaderMap;

/// Whether the request carries `key` in either header the Anthropic and OpenAI clients use.
pub fn is_authorized(headers: &HeaderMap, key: &str) -> bool {
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    [x_api_key, bearer]
        .into_iter()
        .flatten()
        .any(|given| constant_time_eq(given.as_bytes(), key.as_bytes()))
}

/// Compare without an early exit, so timing does not reveal how much of a key matched,
/// nor its length: every byte of `key` is compared, against 0 past the end of `given`.
fn constant_time_eq(given: &[u8], key: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != key.len());
    for (i, k) in key.iter().enumerate() {
        diff |= k ^ given.get(i).copied().unwrap_or(!k);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn accepts_either_header() {
        assert!(is_authorized(&headers(&[("x-api-key", "k1")]), "k1"));
        assert!(is_authorized(
            &headers(&[("authorization", "Bearer k1")]),
            "k1"
        ));
    }

    #[test]
    fn rejects_wrong_or_missing_key() {
        assert!(!is_authorized(&headers(&[("x-api-key", "k2")]), "k1"));
        assert!(!is_authorized(
            &headers(&[("authorization", "Basic k1")]),
            "k1"
        ));
        assert!(!is_authorized(&headers(&[]), "k1"));
        // A prefix or an extension of the key is not the key.
        assert!(!is_authorized(&headers(&[("x-api-key", "k")]), "k1"));
        assert!(!is_authorized(&headers(&[("x-api-key", "k12")]), "k1"));
        assert!(!is_authorized(&headers(&[("x-api-key", "")]), "k1"));
        // One wrong header and one right one: the right one wins.
        assert!(is_authorized(
            &headers(&[("x-api-key", "bad"), ("authorization", "Bearer k1")]),
            "k1"
        ));
    }
}
