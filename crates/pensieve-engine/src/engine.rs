//! The engine handle: turns neutral requests into prompts, admits them into a bounded
//! queue, and hands them to the scheduler on a dedicated OS thread that owns the
//! [`ModelRunner`] (llama.cpp contexts must stay on one thread).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cache::{CacheConfig, CacheIndex};
use crate::constrain::{Constraint, Grammars, LazyCall};
use crate::formats::ToolFormat;
use crate::metrics::EngineMetrics;
use crate::model::{ModelInfo, ModelRunner, TokenId, Tokenizer};
use crate::output::{marker_tokens, OutputFormat};
use crate::request::ToolSpec;
use crate::scheduler::{Command, Counters, Job, Scheduler, SchedulerConfig};
use crate::template::{ChatTemplate, RenderOptions, SpecialTokens};
use crate::{
    EngineError, GenerateRequest, GenerationEvent, Media, MediaPrompt, RawPrompt, SamplingParams,
    ToolChoice, Usage, Vision, VisionError,
};

/// Settings of the engine itself (the model's own come from the backend).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Requests that may wait for a sequence slot; past this, new ones are refused as
    /// overloaded.
    pub queue_capacity: usize,
    /// Sequences generating at once (continuous batching).
    pub parallel: usize,
    pub cache: CacheConfig,
    /// How the model writes tool calls; None: as its chat template shows.
    pub tool_format: Option<ToolFormat>,
    /// Metrics to record into, shared with the engines of other served models; None: a
    /// registry of its own.
    pub metrics: Option<Arc<EngineMetrics>>,
    /// Speculative decoding (on backends that can check drafts).
    pub speculative: crate::speculate::Speculative,
    /// The model's vision projector (the backend's loader gives it): images in requests
    /// are then shown to the model, not described by a placeholder.
    pub vision: Option<Arc<dyn Vision>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_capacity: crate::settings::DEFAULT_QUEUE,
            parallel: crate::settings::HOST_MAX_PARALLEL,
            cache: CacheConfig::default(),
            tool_format: None,
            metrics: None,
            speculative: crate::speculate::Speculative::Off,
            vision: None,
        }
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
    /// Report what the prefix cache stores as cache creation.
    pub cache_requested: bool,
    /// The client's cache breakpoints in the prompt, in order of position.
    pub cache_points: Vec<CachePoint>,
    /// What to look for in the output (tool calls, reasoning).
    pub output: OutputFormat,
    /// The grammar the output must follow (a forced tool call).
    pub constraint: Option<Constraint>,
    /// The grammar a call follows once the model opens one (`tool_choice: auto`).
    pub lazy_call: Option<LazyCall>,
    /// The tools offered (none under `tool_choice: none`): their schemas type the raw
    /// argument values of the XML-style formats.
    pub tools: Vec<ToolSpec>,
    /// The stretches of the prompt that are images, in order (a vision model's).
    pub media: Vec<Media>,
}

/// A cache breakpoint in a prompt: the prefix cache keeps a snapshot of the first `at`
/// tokens (see [`crate::Breakpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePoint {
    pub at: usize,
    /// The system prompt and tools: what other conversations start with too.
    pub shared: bool,
}

/// A running request: its events arrive on `events`; dropping it cancels the request.
#[derive(Debug)]
pub struct Generation {
    pub events: mpsc::UnboundedReceiver<GenerationEvent>,
    /// The prompt's usage split as the prefix cache stood when the request was queued
    /// (no completion tokens), for what a stream announces before prefill. The final
    /// usage, in [`GenerationEvent::Done`], is what admission really found.
    pub queued_usage: Usage,
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
    /// How the model writes tool calls, if we know.
    tool_format: Option<ToolFormat>,
    /// The template knows `<think>` blocks.
    reasoning: bool,
    /// Tokens that stand for marker text (see [`crate::output::marker_tokens`]).
    markers: HashMap<TokenId, Vec<u8>>,
    /// Grammars over the model's vocabulary, built by the first request with tools (it
    /// walks the whole vocabulary); None if they could not be built.
    grammars: OnceLock<Option<Grammars>>,
    queue: mpsc::UnboundedSender<Command>,
    /// The engine thread's prefix cache index: what a queued prompt will reuse.
    cache: CacheIndex,
    capacity: usize,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<EngineMetrics>,
    vision: Option<Arc<dyn Vision>>,
}

/// A draft model for speculative decoding (`--draft-model`): a smaller model of the same
/// tokenizer, with a KV slot for each of the model's.
pub struct DraftModel {
    pub tokenizer: Arc<dyn Tokenizer>,
    pub runner: Box<dyn ModelRunner>,
    /// The most positions of a sequence it holds (its context per slot).
    pub window: usize,
}

impl Engine {
    /// Start the engine thread over a loaded model.
    pub fn start(
        info: ModelInfo,
        tokenizer: Arc<dyn Tokenizer>,
        runner: Box<dyn ModelRunner>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        Engine::start_with_draft(info, tokenizer, runner, None, config)
    }

    /// Start the engine thread over a loaded model, with a draft model for speculation
    /// (`config.speculative` then says `Draft`). A draft model of another tokenizer is
    /// refused.
    pub fn start_with_draft(
        info: ModelInfo,
        tokenizer: Arc<dyn Tokenizer>,
        runner: Box<dyn ModelRunner>,
        draft: Option<DraftModel>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let draft = match draft {
            Some(d) => {
                crate::speculate::check_vocabulary(tokenizer.as_ref(), d.tokenizer.as_ref())
                    .map_err(EngineError::Draft)?;
                if !d.runner.can_truncate() {
                    return Err(EngineError::Draft(
                        "its cache cannot be cut back to a position (sliding-window or \
                         recurrent layers), so rejected drafts could not be dropped"
                            .into(),
                    ));
                }
                Some(crate::scheduler::DraftModel::new(d.runner, d.window))
            }
            None => None,
        };
        let template = ChatTemplate::for_model(
            info.chat_template.as_deref(),
            &info.architecture,
            SpecialTokens {
                bos: info.bos_token.clone(),
                eos: info.eos_token.clone(),
            },
        )?;
        let source = info.chat_template.as_deref().unwrap_or_default();
        // Tools the template can't place are described in the system prompt: as the
        // model's format documents it where it does, else in the `<tool_call>` convention.
        let tool_format = config.tool_format.or_else(|| {
            let detected = ToolFormat::detect(source);
            if template.renders_tools() {
                detected
            } else {
                detected
                    .filter(|f| f.has_tool_prompt())
                    .or(Some(ToolFormat::HERMES))
            }
        });
        let think_open = tool_format.map_or("<think>", |f| f.reasoning().0);
        let reasoning = source.contains("<think>") || source.contains(think_open);
        let markers = marker_tokens(tokenizer.as_ref(), tool_format);
        tracing::info!(
            template = template.describe(),
            tool_format = ?tool_format,
            reasoning,
            "chat template ready"
        );
        let capacity = config.queue_capacity.max(1);
        let (queue, commands) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let counters = Arc::new(Counters {
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
        });
        let metrics = config.metrics.clone().unwrap_or_default();
        let scheduler = Scheduler::new(
            runner,
            tokenizer.clone(),
            commands,
            shutdown.clone(),
            counters.clone(),
            metrics.clone(),
            SchedulerConfig {
                parallel: config.parallel,
                cache: config.cache,
                markers: markers.clone(),
                speculative: config.speculative,
                draft_model: draft,
            },
        );
        let cache = scheduler.cache_index();
        let thread = std::thread::Builder::new()
            .name("pensieve-engine".into())
            .spawn(move || scheduler.run())
            .map_err(|e| EngineError::Backend(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            shared: Arc::new(Shared {
                info,
                tokenizer,
                template,
                tool_format,
                reasoning,
                markers,
                grammars: OnceLock::new(),
                queue,
                cache,
                capacity,
                counters,
                shutdown,
                thread: std::sync::Mutex::new(Some(thread)),
                metrics,
                vision: config.vision,
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
        Ok(self.tokenize(&self.render(request)?, request)?.tokens)
    }

    /// Whether the model sees images (a vision projector is loaded).
    pub fn sees_images(&self) -> bool {
        self.shared.vision.is_some()
    }

    /// The rendered prompt's tokens. For a model that sees images, each image the client
    /// sent inline is put where its placeholder is in the text (translation wrote the
    /// placeholder into its message, in order) and tokenized by the projector.
    fn tokenize(&self, text: &str, request: &GenerateRequest) -> Result<MediaPrompt, EngineError> {
        let inline = || request.images.iter().filter(|i| i.data.is_some());
        let Some(vision) = self
            .shared
            .vision
            .as_ref()
            .filter(|_| inline().next().is_some())
        else {
            return Ok(MediaPrompt {
                tokens: self.shared.tokenizer.encode(text),
                media: Vec::new(),
            });
        };
        let mut marked = String::with_capacity(text.len());
        let mut rest = text;
        let mut images = Vec::new();
        for image in inline() {
            let placeholder = image.placeholder();
            let Some(i) = rest.find(&placeholder) else {
                // A template may leave some content out (a tool result's, say).
                tracing::warn!(at = image.at, "the chat template left an image out");
                continue;
            };
            marked.push_str(&rest[..i]);
            marked.push_str(vision.marker());
            rest = &rest[i + placeholder.len()..];
            images.push(image);
        }
        marked.push_str(rest);
        let bytes: Vec<&[u8]> = images.iter().filter_map(|i| i.data.as_deref()).collect();
        let mut prompt = vision.tokenize(&marked, &bytes).map_err(|e| {
            EngineError::InvalidRequest(match e {
                // Named by the client's block.
                VisionError::Image { index, reason } => match images.get(index) {
                    Some(image) => format!("{}: {reason}", image.at),
                    None => reason,
                },
                VisionError::Prompt(why) => why,
            })
        })?;
        for (media, image) in prompt.media.iter_mut().zip(&images) {
            media.block.clone_from(&image.at);
        }
        // The logits sampled first are those of the prompt's last token: text.
        if prompt
            .media
            .last()
            .is_some_and(|m| m.end() >= prompt.tokens.len())
        {
            return Err(EngineError::InvalidRequest(
                "messages: the prompt must not end with an image".into(),
            ));
        }
        Ok(prompt)
    }

    fn render(&self, request: &GenerateRequest) -> Result<String, EngineError> {
        Ok(self.render_with_breakpoints(request, &[])?.0)
    }

    /// The prompt text and where the client's cache breakpoints fall in it (byte offsets).
    fn render_with_breakpoints(
        &self,
        request: &GenerateRequest,
        points: &[crate::Breakpoint],
    ) -> Result<(String, Vec<(usize, crate::Breakpoint)>), EngineError> {
        // `tool_choice: none` offers no tools.
        let tools = if request.tool_choice == ToolChoice::None {
            &[][..]
        } else {
            &request.tools[..]
        };
        Ok(self.shared.template.render_with_breakpoints(
            &request.messages,
            tools,
            &RenderOptions {
                // A forced call starts at the call's marker: no reasoning before it.
                enable_thinking: request.thinking
                    && !matches!(
                        request.tool_choice,
                        ToolChoice::Required | ToolChoice::Named(_)
                    ),
                reasoning_effort: request.effort.map(|e| e.as_str().to_owned()),
                tool_format: self.shared.tool_format,
            },
            points,
        )?)
    }

    /// Token positions of the breakpoints at these byte offsets of the prompt `text`
    /// (tokenized as `prompt`): where the prefix's own tokens still agree with the
    /// prompt's (a token that spans the offset is left out).
    fn cache_points(
        &self,
        text: &str,
        prompt: &[TokenId],
        offsets: &[(usize, crate::Breakpoint)],
    ) -> Vec<CachePoint> {
        let mut points: Vec<CachePoint> = offsets
            .iter()
            .filter_map(|&(offset, point)| {
                let prefix = self.shared.tokenizer.encode(text.get(..offset)?);
                let at = prefix
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count();
                (at > 0 && at < prompt.len()).then_some(CachePoint {
                    at,
                    shared: point == crate::Breakpoint::Preamble,
                })
            })
            .collect();
        points.sort_by_key(|p| (p.at, !p.shared));
        points.dedup_by_key(|p| p.at);
        points
    }

    /// Build the prompt and check that the request can run.
    pub fn validate(&self, request: &GenerateRequest) -> Result<ValidRequest, EngineError> {
        validate_sampling(&request.sampling, self.shared.tokenizer.vocab_size())?;
        if request.max_tokens == 0 {
            return Err(EngineError::InvalidRequest(
                "max_tokens: must be at least 1".into(),
            ));
        }
        let mut cache_points = Vec::new();
        let mut media = Vec::new();
        let (text, prompt) = match &request.raw_prompt {
            None => {
                let (text, offsets) =
                    self.render_with_breakpoints(request, &request.breakpoints)?;
                let prompt = self.tokenize(&text, request)?;
                media = prompt.media;
                let prompt = prompt.tokens;
                cache_points = self.cache_points(&text, &prompt, &offsets);
                (text, prompt)
            }
            Some(RawPrompt::Text(text)) => (text.clone(), self.shared.tokenizer.encode(text)),
            Some(RawPrompt::Tokens(tokens)) => {
                let vocab = self.shared.tokenizer.vocab_size();
                if let Some(t) = tokens
                    .iter()
                    .find(|t| usize::try_from(**t).map_or(true, |t| t >= vocab))
                {
                    return Err(EngineError::InvalidRequest(format!(
                        "prompt: token {t} is not in the vocabulary ({vocab} tokens)"
                    )));
                }
                (String::new(), tokens.clone())
            }
        };
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
        let (constraint, lazy_call) = self.constraint(request)?;
        Ok(ValidRequest {
            prompt,
            max_tokens: request.max_tokens.min(context - tokens),
            requested_max_tokens: request.max_tokens,
            sampling: request.sampling.clone(),
            stop_sequences: request.stop_sequences.clone(),
            cache_requested: request.cache_requested,
            cache_points,
            // A text completion is the model's text as it is.
            output: self.output_format(request, &text),
            constraint,
            lazy_call,
            tools: if request.raw_prompt.is_some() || request.tool_choice == ToolChoice::None {
                Vec::new()
            } else {
                request.tools.clone()
            },
            media,
        })
    }

    /// What the output parser looks for. A text completion is the model's text as it is.
    fn output_format(&self, request: &GenerateRequest, prompt: &str) -> OutputFormat {
        if request.raw_prompt.is_some() {
            return OutputFormat::default();
        }
        let model = self.shared.tool_format;
        let offered = !request.tools.is_empty() && request.tool_choice != ToolChoice::None;
        let format = OutputFormat {
            tools: model.filter(|_| offered),
            model,
            reasoning: self.shared.reasoning,
            starts_thinking: false,
            hide_reasoning: !request.show_thinking,
        };
        let (open, _) = format.reasoning_markers();
        let prompt = prompt.trim_end();
        OutputFormat {
            starts_thinking: prompt.ends_with(open) || prompt.ends_with("<think>"),
            ..format
        }
    }

    /// The grammars of a request with tools: the whole output when `tool_choice` forces
    /// a call (`Some(name)`, `Some(None)` for any tool), else each call the model opens.
    fn constraint(
        &self,
        request: &GenerateRequest,
    ) -> Result<(Option<Constraint>, Option<LazyCall>), EngineError> {
        let forced = match &request.tool_choice {
            // A reply that is JSON; with tools offered, the tools' grammars come first.
            _ if request.output_schema.is_some()
                && (request.tools.is_empty() || request.tool_choice == ToolChoice::None) =>
            {
                return self.json_output(request);
            }
            ToolChoice::None => return Ok((None, None)),
            ToolChoice::Auto if request.tools.is_empty() => return Ok((None, None)),
            ToolChoice::Auto => None,
            ToolChoice::Required => Some(None),
            ToolChoice::Named(name) => Some(Some(name.as_str())),
        };
        if let Some(name) = forced {
            if request.tools.is_empty() {
                return Err(EngineError::InvalidRequest(
                    "tool_choice: requires a tool call, but no tools were given".into(),
                ));
            }
            if let Some(name) = name.filter(|n| !request.tools.iter().any(|t| t.name == *n)) {
                return Err(EngineError::InvalidRequest(format!(
                    "tool_choice.name: {name:?} is not among the tools"
                )));
            }
        }
        let (Some(format), Some(grammars)) = (self.shared.tool_format, self.grammars()) else {
            if forced.is_some() {
                tracing::warn!(
                    "tool_choice cannot be enforced for this model (no known tool-call format)"
                );
            }
            return Ok((None, None));
        };
        let built = match forced {
            Some(name) => grammars
                .forced_call(format, &request.tools, name)
                .map(|c| (Some(c), None)),
            None => grammars
                .call_body(format, &request.tools, request.parallel_tool_calls)
                .map(|lazy| (None, Some(lazy))),
        };
        Ok(built.unwrap_or_else(|e| {
            tracing::warn!("tool calls not constrained: {e}");
            (None, None)
        }))
    }

    /// The grammar of a structured-output request.
    fn json_output(
        &self,
        request: &GenerateRequest,
    ) -> Result<(Option<Constraint>, Option<LazyCall>), EngineError> {
        let (Some(schema), Some(grammars)) = (&request.output_schema, self.grammars()) else {
            return Err(EngineError::InvalidRequest(
                "response_format: constrained decoding is not available for this model".into(),
            ));
        };
        let constraint = grammars
            .json_output(schema)
            .map_err(|e| EngineError::InvalidRequest(format!("response_format: {e}")))?;
        Ok((Some(constraint), None))
    }

    fn grammars(&self) -> Option<&Grammars> {
        let shared = &self.shared;
        shared
            .grammars
            .get_or_init(
                || match Grammars::new(shared.tokenizer.as_ref(), &shared.markers) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        tracing::warn!("constrained decoding is off: {e}");
                        None
                    }
                },
            )
            .as_ref()
    }

    /// Queue a request. Fails at once when the queue is full or the engine is gone.
    pub fn submit(&self, request: ValidRequest) -> Result<Generation, EngineError> {
        if self.shared.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let waiting = &self.shared.counters.waiting;
        if waiting.fetch_add(1, Ordering::Relaxed) >= self.shared.capacity {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::Overloaded {
                waiting: self.shared.capacity,
            });
        }
        // Here, not on the engine thread: that one may be in a long decode step, and the
        // stream's first event goes out now.
        let queued_usage = Usage::for_prompt(&request, self.shared.cache.estimate(&request.prompt));
        let (events, receiver) = mpsc::unbounded_channel();
        let job = Job {
            request,
            events,
            submitted: Instant::now(),
        };
        if self.shared.queue.send(Command::Run(Box::new(job))).is_err() {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::EngineStopped);
        }
        Ok(Generation {
            events: receiver,
            queued_usage,
        })
    }

    /// Requests waiting for a sequence slot.
    pub fn queue_depth(&self) -> usize {
        self.shared.counters.waiting.load(Ordering::Relaxed)
    }

    /// Sequences being prefilled or generated.
    pub fn running(&self) -> usize {
        self.shared.counters.running.load(Ordering::Relaxed)
    }

    /// Stop the engine: running and queued requests end with a shutdown error, and the
    /// engine thread exits once they have.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
        // Wake the thread if it is idle.
        let _ = self.shared.queue.send(Command::Stop);
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

fn validate_sampling(s: &SamplingParams, vocab_size: usize) -> Result<(), EngineError> {
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
    for (name, p) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if !(-2.0..=2.0).contains(&p) {
            return Err(EngineError::InvalidRequest(format!(
                "{name}: must be between -2 and 2"
            )));
        }
    }
    if let Some((token, _)) = s
        .logit_bias
        .iter()
        .find(|(t, _)| usize::try_from(*t).map_or(true, |t| t >= vocab_size))
    {
        return Err(EngineError::InvalidRequest(format!(
            "logit_bias: token {token} is not in the vocabulary ({vocab_size} tokens)"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
