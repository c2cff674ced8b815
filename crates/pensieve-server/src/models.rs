//! Which loaded model serves a request: the requested name exactly, else the first alias
//! pattern it matches (`claude-*haiku*` -> a small model), else the default model. Clients
//! like Claude Code ask for names that exist only at Anthropic; they must still be served.

use std::sync::Arc;
use std::time::SystemTime;

use pensieve_engine::{Engine, EngineError, EngineMetrics, GenerateRequest, Generation};
use pensieve_upstream::{ReplicaStatus, Upstream};

/// What generates a model's tokens.
#[derive(Clone)]
pub enum Backend {
    /// A local engine: the scheduler and prefix cache over llama.cpp or MLX.
    Local(Engine),
    /// OpenAI-compatible replicas elsewhere, which do the math.
    Upstream {
        upstream: Upstream,
        /// Where the server's counters go (a local engine records into its own).
        metrics: Arc<EngineMetrics>,
    },
}

impl From<Engine> for Backend {
    fn from(engine: Engine) -> Self {
        Backend::Local(engine)
    }
}

impl Backend {
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        match self {
            Backend::Local(engine) => engine.metrics(),
            Backend::Upstream { metrics, .. } => metrics,
        }
    }

    /// Requests waiting for a sequence, or for a place on a full replica.
    pub fn queue_depth(&self) -> usize {
        match self {
            Backend::Local(engine) => engine.queue_depth(),
            Backend::Upstream { upstream, .. } => upstream.waiting(),
        }
    }

    /// Positions of one sequence, where Pensieve knows it.
    pub fn context_size(&self) -> Option<u32> {
        match self {
            Backend::Local(engine) => Some(engine.info().context_size),
            Backend::Upstream { .. } => None,
        }
    }

    /// Start generating a request that the edge has validated as far as its API goes.
    /// A local engine renders and tokenizes it first: CPU work, so called off the reactor.
    pub fn submit_blocking(&self, request: &GenerateRequest) -> Result<Generation, EngineError> {
        match self {
            Backend::Local(engine) => engine.submit(engine.validate(request)?),
            Backend::Upstream { upstream, .. } => upstream.submit(request),
        }
    }

    /// Background work that needs the runtime: an upstream's health checks.
    pub fn start_background(&self) {
        if let Backend::Upstream { upstream, .. } = self {
            upstream.spawn_health_checks();
        }
    }

    /// An upstream's replicas and their state (none for a local engine).
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        match self {
            Backend::Local(_) => Vec::new(),
            Backend::Upstream { upstream, .. } => upstream.replicas(),
        }
    }

    /// End running and queued generations (the server is stopping).
    pub fn shutdown(&self) {
        if let Backend::Local(engine) = self {
            engine.shutdown();
        }
    }

    /// Wait for a local engine's thread to end.
    pub fn join(&self) {
        if let Backend::Local(engine) = self {
            engine.join();
        }
    }
}

/// One loaded model.
#[derive(Clone)]
pub struct ServedModel {
    /// The name `/v1/models` lists.
    pub id: String,
    pub backend: Backend,
    /// When its file was made (reported by `/v1/models`).
    pub created: SystemTime,
    /// Where it runs, e.g. "CPU, 8 threads" (reported by `/health`).
    pub runs_on: String,
}

/// The loaded models and the aliases onto them.
#[derive(Clone)]
pub struct ModelRouter {
    models: Vec<ServedModel>,
    /// (pattern, index into `models`), most specific pattern first.
    aliases: Vec<(String, usize)>,
}

impl ModelRouter {
    /// A router whose default (and so far only) model is `default`.
    pub fn new(default: ServedModel) -> ModelRouter {
        ModelRouter {
            models: vec![default],
            aliases: Vec::new(),
        }
    }

    /// Add a model; returns its index for [`ModelRouter::alias`].
    pub fn add(&mut self, model: ServedModel) -> usize {
        self.models.push(model);
        self.models.len() - 1
    }

    /// Requests for names matching `pattern` (`*` matches any run of characters, case
    /// ignored) go to model `index`. A pattern with more literal characters wins over a
    /// vaguer one; among equals, the first added.
    pub fn alias(&mut self, pattern: &str, index: usize) {
        if index >= self.models.len() {
            return;
        }
        self.aliases.push((pattern.to_owned(), index));
        self.aliases
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.chars().filter(|&c| c != '*').count()));
    }

    pub fn default_model(&self) -> &ServedModel {
        &self.models[0]
    }

    pub fn models(&self) -> &[ServedModel] {
        &self.models
    }

    /// The model serving a request for `requested`.
    pub fn route(&self, requested: &str) -> &ServedModel {
        if let Some(model) = self.models.iter().find(|m| m.id == requested) {
            return model;
        }
        self.aliases
            .iter()
            .find(|(pattern, _)| glob_match(pattern, requested))
            .map_or(&self.models[0], |&(_, i)| &self.models[i])
    }

    /// The alias patterns and the id each points to.
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &str)> {
        self.aliases
            .iter()
            .map(|(p, i)| (p.as_str(), self.models[*i].id.as_str()))
    }
}

/// `*` matches any run of characters (also none); everything else literally, ignoring
/// ASCII case.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_ascii_lowercase(), text.to_ascii_lowercase());
    let mut pieces = p.split('*');
    let first = pieces.next().unwrap_or("");
    let Some(mut rest) = t.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("claude-*haiku*", "claude-haiku-4-5-20251001"));
        assert!(glob_match("claude-*haiku*", "claude-3-5-haiku-latest"));
        assert!(glob_match("CLAUDE-*", "claude-opus-5-5"));
        assert!(!glob_match("claude-*haiku*", "claude-opus-5-5"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*a", "aa"));
        assert!(!glob_match("a*a", "a"));
        assert!(glob_match("*-mini", "gpt-4o-mini"));
    }
}
