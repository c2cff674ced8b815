//! Responses kept for `previous_response_id` and `GET /v1/responses/{id}`: in RAM only,
//! bounded by count and by size, the oldest dropped first. A restart forgets them all
//! (the prefix cache keeps the prompts' work; the client keeps the conversation).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use pensieve_engine::Message;
use serde_json::Value;

/// At most this many responses are kept.
pub const MAX_RESPONSES: usize = 10_000;
/// At most about this many bytes of them (their JSON and their conversations' text).
pub const MAX_BYTES: usize = 256 * 1024 * 1024;

/// One kept response.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The response object, as `GET` returns it.
    pub response: Value,
    /// The conversation that `previous_response_id` continues: every earlier turn
    /// (without the instructions, which a follow-up gives again) and this reply.
    pub conversation: Arc<Vec<Message>>,
}

impl Stored {
    fn bytes(&self) -> usize {
        let text: usize = self
            .conversation
            .iter()
            .map(|m| {
                m.content.len()
                    + m.reasoning.as_ref().map_or(0, String::len)
                    + m.tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.to_string().len())
                        .sum::<usize>()
            })
            .sum();
        self.response.to_string().len() + text
    }
}

#[derive(Debug)]
pub struct ResponseStore {
    inner: Mutex<Inner>,
    max_responses: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, (Stored, usize)>,
    /// Ids, oldest first (deleted ones stay until they come up).
    order: VecDeque<String>,
    bytes: usize,
}

impl Default for ResponseStore {
    fn default() -> Self {
        ResponseStore::new(MAX_RESPONSES, MAX_BYTES)
    }
}

impl ResponseStore {
    pub fn new(max_responses: usize, max_bytes: usize) -> Self {
        ResponseStore {
            inner: Mutex::new(Inner::default()),
            max_responses,
            max_bytes,
        }
    }

    /// Keep `stored` under `id`, dropping the oldest responses past the bounds. One larger
    /// than all of them is not kept.
    pub fn insert(&self, id: String, stored: Stored) {
        let size = stored.bytes();
        if size > self.max_bytes {
            tracing::warn!(response_id = %id, bytes = size, "response too large to keep");
            return;
        }
        let mut inner = self.lock();
        if let Some((_, old)) = inner.by_id.remove(&id) {
            inner.bytes -= old;
        }
        while inner.by_id.len() >= self.max_responses || inner.bytes + size > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some((_, old)) = inner.by_id.remove(&oldest) {
                inner.bytes -= old;
            }
        }
        inner.bytes += size;
        inner.order.push_back(id.clone());
        inner.by_id.insert(id, (stored, size));
    }

    pub fn get(&self, id: &str) -> Option<Stored> {
        self.lock().by_id.get(id).map(|(s, _)| s.clone())
    }

    /// Forget `id`; whether it was kept.
    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let Some((_, size)) = inner.by_id.remove(id) else {
            return false;
        };
        inner.bytes -= size;
        inner.order.retain(|kept| kept != id);
        true
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the maps consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::Role;
    use serde_json::json;

    fn stored(text: &str) -> Stored {
        Stored {
            response: json!({"id": "x"}),
            conversation: Arc::new(vec![Message::text(Role::User, text)]),
        }
    }

    #[test]
    fn keeps_gets_and_deletes() {
        let store = ResponseStore::default();
        store.insert("a".into(), stored("hello"));
        assert_eq!(store.get("a").unwrap().conversation[0].content, "hello");
        assert!(store.get("b").is_none());
        assert!(store.remove("a"));
        assert!(!store.remove("a"));
        assert!(store.get("a").is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn the_oldest_go_first_past_the_count() {
        let store = ResponseStore::new(2, usize::MAX);
        for id in ["a", "b", "c"] {
            store.insert(id.into(), stored(id));
        }
        assert!(store.get("a").is_none());
        assert!(store.get("b").is_some() && store.get("c").is_some());
    }

    #[test]
    fn the_oldest_go_first_past_the_size_and_one_too_large_is_not_kept() {
        let one = stored(&"x".repeat(100)).bytes();
        let store = ResponseStore::new(100, one * 2 + one / 2);
        for id in ["a", "b", "c"] {
            store.insert(id.into(), stored(&"x".repeat(100)));
        }
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none());
        store.insert("big".into(), stored(&"x".repeat(one * 3)));
        assert!(store.get("big").is_none());
        assert_eq!(store.len(), 2);
        // A deleted id leaves its room to others.
        assert!(store.remove("b"));
        store.insert("d".into(), stored(&"x".repeat(100)));
        assert!(store.get("c").is_some() && store.get("d").is_some());
    }
}
