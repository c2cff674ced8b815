//! Which replica takes a request. Requests of one conversation, known by its start (system
//! prompt, tools, first user message), go back to the replica that served it last, whose
//! prefix cache holds it; new conversations, and those whose replica is overloaded or out,
//! go to the replica with the fewest requests in flight (SGLang's router does the same with a
//! radix tree of prompts; a conversation's start is what an agent's turns share). Among equally
//! busy replicas, the one holding the fewest conversations takes a new one, so that idle
//! replicas take turns and the caches fill evenly. Round-robin, the policy to compare it
//! with, sends each request to the next open replica in turn.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use pensieve_engine::{GenerateRequest, Role};

/// A replica as the router sees it at the moment of choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    /// Passing its health checks (a failed one is out until it passes again).
    pub healthy: bool,
    /// Requests sent to it and not yet ended.
    pub in_flight: usize,
    /// The most requests it may have in flight.
    pub limit: usize,
}

impl Replica {
    fn open(&self) -> bool {
        self.healthy && self.in_flight < self.limit
    }
}

/// How a replica is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Routing {
    /// A conversation's requests go back to its replica (unless it is far busier).
    #[default]
    CacheAware,
    /// Each request to the next open replica in turn.
    RoundRobin,
}

/// Remembers which replica served each conversation.
#[derive(Debug)]
pub struct Router {
    policy: Routing,
    /// The replica round-robin chose last.
    turn: usize,
    /// Conversation key -> (replica, when last routed).
    last: HashMap<u64, (usize, u64)>,
    /// Conversations remembered per replica.
    held: Vec<usize>,
    clock: u64,
    /// Conversations remembered; the longest unused is forgotten first.
    capacity: usize,
    /// A conversation leaves its replica when that has this many more requests in flight
    /// than the least busy open one: a cache hit is not worth a long wait.
    imbalance: usize,
}

impl Router {
    pub fn new(policy: Routing, capacity: usize, imbalance: usize) -> Self {
        Router {
            policy,
            turn: usize::MAX,
            last: HashMap::new(),
            held: Vec::new(),
            clock: 0,
            capacity: capacity.max(1),
            imbalance,
        }
    }

    /// The replica for the conversation `key`, leaving out `tried` (replicas that already
    /// refused this request's connection); None when none is open (the request waits).
    pub fn choose(&mut self, key: u64, replicas: &[Replica], tried: &[usize]) -> Option<usize> {
        if self.held.len() < replicas.len() {
            self.held.resize(replicas.len(), 0);
        }
        let open = |i: usize| replicas[i].open() && !tried.contains(&i);
        if self.policy == Routing::RoundRobin {
            let n = replicas.len();
            let next = (1..=n)
                .map(|step| self.turn.wrapping_add(step) % n)
                .find(|&i| open(i))?;
            self.turn = next;
            return Some(next);
        }
        let held = &self.held;
        let least = (0..replicas.len())
            .filter(|&i| open(i))
            .min_by_key(|&i| (replicas[i].in_flight, held[i], i))?;
        let previous = self.last.get(&key).map(|&(i, _)| i);
        let chosen = match previous {
            Some(i)
                if i < replicas.len()
                    && open(i)
                    && replicas[i].in_flight <= replicas[least].in_flight + self.imbalance =>
            {
                i
            }
            _ => least,
        };
        self.clock += 1;
        if previous.is_none() && self.last.len() >= self.capacity {
            if let Some((oldest, (replica, _))) = self
                .last
                .iter()
                .min_by_key(|(_, &(_, t))| t)
                .map(|(&k, &v)| (k, v))
            {
                self.last.remove(&oldest);
                self.release(replica);
            }
        }
        if let Some(i) = previous {
            self.release(i);
        }
        self.last.insert(key, (chosen, self.clock));
        if let Some(n) = self.held.get_mut(chosen) {
            *n += 1;
        }
        Some(chosen)
    }

    fn release(&mut self, replica: usize) {
        if let Some(n) = self.held.get_mut(replica) {
            *n = n.saturating_sub(1);
        }
    }
}

/// What the requests of one conversation share from its first turn on: the system prompt,
/// the tools, and the first user message.
pub fn conversation_key(request: &GenerateRequest) -> u64 {
    let mut h = DefaultHasher::new();
    for m in request.messages.iter().filter(|m| m.role == Role::System) {
        m.content.hash(&mut h);
    }
    for t in &request.tools {
        t.name.hash(&mut h);
        t.description.hash(&mut h);
        t.parameters.to_string().hash(&mut h);
    }
    if let Some(first) = request.messages.iter().find(|m| m.role == Role::User) {
        first.content.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::Message;

    fn replicas(in_flight: &[usize]) -> Vec<Replica> {
        in_flight
            .iter()
            .map(|&n| Replica {
                healthy: true,
                in_flight: n,
                limit: 8,
            })
            .collect()
    }

    #[test]
    fn a_conversation_sticks_and_new_ones_spread() {
        let mut router = Router::new(Routing::CacheAware, 100, 4);
        // New conversations go to the least busy replica.
        assert_eq!(router.choose(1, &replicas(&[0, 0]), &[]), Some(0));
        assert_eq!(router.choose(2, &replicas(&[1, 0]), &[]), Some(1));
        // Their next turns go back, though the other replica is a little less busy.
        assert_eq!(router.choose(1, &replicas(&[2, 1]), &[]), Some(0));
        assert_eq!(router.choose(2, &replicas(&[1, 3]), &[]), Some(1));
    }

    #[test]
    fn new_conversations_take_turns_on_idle_replicas() {
        let mut router = Router::new(Routing::CacheAware, 100, 4);
        let idle = replicas(&[0, 0, 0]);
        // One at a time, each ending before the next starts: all replicas stay idle.
        let chosen: Vec<_> = (1..=6)
            .map(|k| router.choose(k, &idle, &[]).unwrap())
            .collect();
        assert_eq!(chosen, [0, 1, 2, 0, 1, 2]);
        // A conversation that moves is counted where it went.
        assert_eq!(router.choose(1, &replicas(&[9, 0, 0]), &[]), Some(1));
        assert_eq!(router.held, [1, 3, 2]);
        assert_eq!(router.choose(7, &idle, &[]), Some(0));
    }

    #[test]
    fn an_overloaded_full_or_failed_replica_hands_its_conversation_over() {
        let mut router = Router::new(Routing::CacheAware, 100, 4);
        assert_eq!(router.choose(1, &replicas(&[0, 0]), &[]), Some(0));
        // Busier by more than the imbalance allowed: the conversation moves, and stays moved.
        assert_eq!(router.choose(1, &replicas(&[6, 1]), &[]), Some(1));
        assert_eq!(router.choose(1, &replicas(&[0, 1]), &[]), Some(1));
        // At its limit.
        let mut full = replicas(&[8, 7]);
        assert_eq!(router.choose(1, &full, &[]), Some(1));
        full[1].in_flight = 8;
        assert_eq!(router.choose(1, &full, &[]), None, "every replica is full");
        // Out of health: its conversations go elsewhere; once it passes again it takes
        // new ones.
        let mut sick = replicas(&[0, 0]);
        sick[1].healthy = false;
        assert_eq!(router.choose(1, &sick, &[]), Some(0));
        assert_eq!(router.choose(5, &sick, &[]), Some(0));
        assert_eq!(router.choose(6, &replicas(&[1, 0]), &[]), Some(1));
        // A replica that refused the connection is not tried again for that request.
        assert_eq!(router.choose(1, &replicas(&[0, 0]), &[0]), Some(1));
        assert_eq!(router.choose(1, &replicas(&[0, 0]), &[0, 1]), None);
    }

    #[test]
    fn the_longest_unused_conversation_is_forgotten_first() {
        let mut router = Router::new(Routing::CacheAware, 2, 4);
        let quiet = replicas(&[0, 0]);
        assert_eq!(router.choose(1, &quiet, &[]), Some(0));
        assert_eq!(router.choose(2, &replicas(&[1, 0]), &[]), Some(1));
        assert_eq!(router.choose(1, &quiet, &[]), Some(0));
        // A third conversation: 2 is forgotten, 1 is kept.
        assert_eq!(router.choose(3, &replicas(&[0, 1]), &[]), Some(0));
        assert_eq!(router.choose(1, &replicas(&[1, 0]), &[]), Some(0));
        // Remembered, 2 would go back to replica 1; forgotten, it goes by load.
        assert_eq!(router.choose(2, &replicas(&[0, 1]), &[]), Some(0));
        assert!(router.last.len() <= 2);
        assert_eq!(router.held.iter().sum::<usize>(), router.last.len());
    }

    #[test]
    fn the_key_is_the_conversations_start() {
        let turn = |messages: &[(Role, &str)]| {
            GenerateRequest::new(
                "m",
                messages
                    .iter()
                    .map(|(r, t)| Message::text(*r, *t))
                    .collect(),
                16,
            )
        };
        let first = turn(&[
            (Role::System, "You are Claude Code."),
            (Role::User, "Fix the bug."),
        ]);
        let later = turn(&[
            (Role::System, "You are Claude Code."),
            (Role::User, "Fix the bug."),
            (Role::Assistant, "Done."),
            (Role::User, "Now the tests."),
        ]);
        let other = turn(&[
            (Role::System, "You are Claude Code."),
            (Role::User, "Write docs."),
        ]);
        assert_eq!(conversation_key(&first), conversation_key(&later));
        assert_ne!(conversation_key(&first), conversation_key(&other));
    }

    #[test]
    fn round_robin_takes_turns_and_skips_closed_replicas() {
        let mut router = Router::new(Routing::RoundRobin, 100, 4);
        let open = replicas(&[0, 0, 0]);
        let picks: Vec<_> = (0..4)
            .map(|_| router.choose(1, &open, &[]).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0]);
        let mut some_out = replicas(&[0, 8, 0]);
        some_out[2].healthy = false;
        assert_eq!(router.choose(1, &some_out, &[]), Some(0));
        assert_eq!(router.choose(1, &some_out, &[0]), None);
    }
}
