//! The engine handle: turns neutral requests into prompts, admits them into a bounded
//! FIFO queue, and runs them one at a time on a dedicated OS thread that owns the
//! [`ModelRunner`] (llama.cpp contexts must stay on one thread).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::generate::{Job, Sequence};
use crate::metrics::EngineMetrics;
use crate::model::{ModelInfo, ModelRunner, TokenId, Tokenizer};
use crate::template::{ChatTemplate, RenderOptions, SpecialTokens};
use crate::{EngineError, GenerateRequest, GenerationEvent, SamplingParams};

/// Settings of the engine itself (the model's own come from the backend).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests that may wait while one runs; past this, new ones are refused as overloaded.
    pub queue_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { queue_capacity: 64 }
    }
}

/// A request that passed validation: its prompt fits and its settings are sane.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRequest {
    pub prompt: Vec<TokenId>,
    /// `max_tokens` after clamping to the context left after the prompt.
    pub max_tokens: u32,
    /// What the client asked for, to tell "max_tokens" from "context full".
    pub requested_max_tokens: u32,
    pub sampling: SamplingParams,
    pub stop_sequences: Vec<String>,
}

/// A running request: its events arrive on `events`; dropping it cancels the request.
#[derive(Debug)]
pub struct Generation {
    pub events: mpsc::UnboundedReceiver<GenerationEvent>,
}

/// Cheap to clone; all clones share one engine thread.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

struct Shared {
    info: ModelInfo,
    tokenizer: Arc<dyn Tokenizer>,
    template: ChatTemplate,
    queue: mpsc::Sender<Command>,
    capacity: usize,
    shutdown: CancellationToken,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<EngineMetrics>,
}

impl Engine {
    /// Start the engine thread over a loaded model.
    pub fn start(
        info: ModelInfo,
        tokenizer: Arc<dyn Tokenizer>,
        runner: Box<dyn ModelRunner>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let template = ChatTemplate::for_model(
            info.chat_template.as_deref(),
            &info.architecture,
            SpecialTokens {
                bos: info.bos_token.clone(),
                eos: info.eos_token.clone(),
            },
        )?;
        tracing::info!(template = template.describe(), "chat template ready");
        let capacity = config.queue_capacity.max(1);
        let (queue, jobs) = mpsc::channel(capacity);
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(EngineMetrics::new());
        let thread = std::thread::Builder::new()
            .name("pensieve-engine".into())
            .spawn({
                let tokenizer = tokenizer.clone();
                let shutdown = shutdown.clone();
                let metrics = metrics.clone();
                move || engine_thread(runner, tokenizer, jobs, shutdown, metrics)
            })
            .map_err(|e| EngineError::Backend(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            shared: Arc::new(Shared {
                info,
                tokenizer,
                template,
                queue,
                capacity,
                shutdown,
                thread: std::sync::Mutex::new(Some(thread)),
                metrics,
            }),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The server's metrics, recorded by the engine thread and the HTTP edge.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.shared.metrics
    }

    /// Render the request through the chat template and tokenize it, exactly as
    /// generation will (count_tokens relies on this being the same path).
    pub fn prompt_tokens(&self, request: &GenerateRequest) -> Result<Vec<TokenId>, EngineError> {
        let text = self.shared.template.render(
            &request.messages,
            &request.tools,
            &RenderOptions {
                enable_thinking: request.thinking,
            },
        )?;
        Ok(self.shared.tokenizer.encode(&text))
    }

    /// Build the prompt and check that the request can run.
    pub fn validate(&self, request: &GenerateRequest) -> Result<ValidRequest, EngineError> {
        validate_sampling(&request.sampling)?;
        if request.max_tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "max_tokens: must be at least 1".into(),
            ));
        }
        let prompt = self.prompt_tokens(request)?;
        let context = self.shared.info.context_size;
        // At least one position must be left to generate into.
        let max_prompt = context.saturating_sub(1);
        let tokens = u32::try_from(prompt.len()).unwrap_or(u32::MAX);
        if tokens > max_prompt {
            return Err(EngineError::PromptTooLong {
                tokens,
                max: max_prompt,
            });
        }
        if tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "messages: the prompt is empty".into(),
            ));
        }
        Ok(ValidRequest {
            prompt,
            max_tokens: request.max_tokens.min(context - tokens),
            requested_max_tokens: request.max_tokens,
            sampling: request.sampling.clone(),
            stop_sequences: request.stop_sequences.clone(),
        })
    }

    /// Queue a request. Fails at once when the queue is full or the engine is gone.
    pub fn submit(&self, request: ValidRequest) -> Result<Generation, EngineError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let job = Job {
            request,
            events,
            submitted: Instant::now(),
        };
        match self.shared.queue.try_send(Command::Run(job)) {
            Ok(()) => Ok(Generation { events: receiver }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(EngineError::Overloaded {
                waiting: self.shared.capacity,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(EngineError::EngineStopped),
        }
    }

    /// Requests waiting in the queue (not counting the one running).
    pub fn queue_depth(&self) -> usize {
        self.shared.capacity - self.shared.queue.capacity()
    }

    /// Stop the engine: running and queued requests end with a shutdown error, and the
    /// engine thread exits once they have.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        // Wake the thread if it is idle. When the queue is full it wakes anyway, for the
        // queued jobs, and closes the queue on seeing the shutdown.
        let _ = self.shared.queue.try_send(Command::Stop);
    }

    /// Wait for the engine thread to exit (after [`Engine::shutdown`]).
    pub fn join(&self) {
        let handle = match self.shared.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the engine thread panicked");
            }
        }
    }
}

fn validate_sampling(s: &SamplingParams) -> Result<(), EngineError> {
    let bad = |msg: &str| Err(EngineError::InvalidRequest(msg.to_owned()));
    if !s.temperature.is_finite() || s.temperature < 0.0 {
        return bad("temperature: must be a number >= 0");
    }
    if let Some(p) = s.top_p {
        if !(0.0..=1.0).contains(&p) {
            return bad("top_p: must be between 0 and 1");
        }
    }
    if let Some(p) = s.min_p {
        if !(0.0..=1.0).contains(&p) {
            return bad("min_p: must be between 0 and 1");
        }
    }
    Ok(())
}

/// What the engine thread is asked to do.
enum Command {
    Run(Job),
    /// Wake up and notice the shutdown.
    Stop,
}

fn engine_thread(
    mut runner: Box<dyn ModelRunner>,
    tokenizer: Arc<dyn Tokenizer>,
    mut jobs: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
    metrics: Arc<EngineMetrics>,
) {
    let mut sequence = Sequence::default();
    while let Some(command) = jobs.blocking_recv() {
        let Command::Run(job) = command else {
            jobs.close();
            continue;
        };
        if shutdown.is_cancelled() {
            let _ = job
                .events
                .send(GenerationEvent::Failed(EngineError::ShuttingDown));
            jobs.close();
            continue;
        }
        // The client left while its request waited.
        if job.events.is_closed() {
            continue;
        }
        metrics.set_running(1);
        sequence.run(runner.as_mut(), tokenizer.as_ref(), job, &shutdown);
        metrics.set_running(0);
    }
    tracing::debug!("engine thread exiting");
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
