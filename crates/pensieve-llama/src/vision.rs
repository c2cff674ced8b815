//! A vision model's projector (the `mmproj` GGUF beside it) through llama.cpp's multimodal
//! library, mtmd: an image in a prompt becomes a stretch of media tokens (see
//! [`pensieve_engine::media`]) and the mtmd chunks that [`crate::runner::LlamaRunner`]
//! computes it from.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{
    mtmd_default_marker, MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunkType,
    MtmdInputChunks, MtmdInputText,
};
use pensieve_engine::{media_token_of, Media, MediaPrompt, Vision, VisionError};

use crate::tokenizer::LlamaTokenizer;
use crate::LlamaError;

/// The projector, shared by the request threads (which prepare images) and the runner
/// (which computes them): mtmd's context is one object for both.
pub struct LlamaVision {
    mtmd: Arc<Mutex<MtmdContext>>,
    tokenizer: Arc<LlamaTokenizer>,
    marker: String,
    path: PathBuf,
}

impl LlamaVision {
    /// Load the projector at `path` for `model`. Refused where the engine could not keep
    /// its positions: projectors whose images take fewer positions than tokens (M-RoPE,
    /// the Qwen2-VL family's).
    pub(crate) fn load(
        path: &Path,
        model: &'static LlamaModel,
        tokenizer: Arc<LlamaTokenizer>,
        threads: usize,
        use_gpu: bool,
    ) -> Result<Self, LlamaError> {
        let failed = |reason: String| LlamaError::Load {
            path: path.to_owned(),
            reason,
        };
        if !path.is_file() {
            return Err(LlamaError::ProjectorNotFound(path.to_owned()));
        }
        let marker = mtmd_default_marker().to_owned();
        let params = MtmdContextParams {
            use_gpu,
            print_timings: false,
            n_threads: i32::try_from(threads).unwrap_or(i32::MAX),
            media_marker: std::ffi::CString::new(marker.clone())
                .map_err(|e| failed(e.to_string()))?,
            image_min_tokens: -1,
            image_max_tokens: -1,
        };
        let name = path.to_string_lossy();
        let mtmd = MtmdContext::init_from_file(&name, model, &params).map_err(|e| {
            failed(format!(
                "not a projector (mmproj) llama.cpp can use with this model ({e})"
            ))
        })?;
        if !mtmd.support_vision() {
            return Err(failed("this projector takes no images".into()));
        }
        if mtmd.decode_use_mrope() {
            return Err(failed(
                "this projector places images with M-RoPE positions (the Qwen2-VL \
                 family's), which Pensieve does not support yet"
                    .into(),
            ));
        }
        Ok(LlamaVision {
            mtmd: Arc::new(Mutex::new(mtmd)),
            tokenizer,
            marker,
            path: path.to_owned(),
        })
    }

    /// The context the runner computes images with.
    pub(crate) fn context(&self) -> Arc<Mutex<MtmdContext>> {
        self.mtmd.clone()
    }

    /// One image as mtmd tokenizes it: the model's own wrapper text around it (Gemma's
    /// `<start_of_image>`) and the image's chunk.
    fn prepare(&self, mtmd: &MtmdContext, image: &[u8]) -> Result<MtmdInputChunks, String> {
        let bitmap = MtmdBitmap::from_buffer(mtmd, image, false)
            .map_err(|_| "it could not be decoded as an image".to_owned())?;
        let text = MtmdInputText {
            text: self.marker.clone(),
            add_special: false,
            parse_special: true,
        };
        mtmd.tokenize(text, &[&bitmap])
            .map_err(|e| format!("the projector could not take it ({e})"))
    }
}

impl Vision for LlamaVision {
    fn marker(&self) -> &str {
        &self.marker
    }

    fn tokenize(&self, text: &str, images: &[&[u8]]) -> Result<MediaPrompt, VisionError> {
        let pieces: Vec<&str> = text.split(self.marker.as_str()).collect();
        if pieces.len() != images.len() + 1 {
            // The marker written in the client's own text.
            return Err(VisionError::Prompt(format!(
                "messages: the text may not contain {}",
                self.marker
            )));
        }
        let mtmd = lock(&self.mtmd);
        let mut prompt = MediaPrompt::default();
        for (i, piece) in pieces.iter().enumerate() {
            if i == 0 {
                prompt.tokens.extend(pensieve_engine::Tokenizer::encode(
                    self.tokenizer.as_ref(),
                    piece,
                ));
            } else {
                prompt.tokens.extend(self.tokenizer.encode_more(piece));
            }
            let Some(image) = images.get(i) else { break };
            let chunks = self
                .prepare(&mtmd, image)
                .map_err(|reason| VisionError::Image { index: i, reason })?;
            let at = prompt.tokens.len();
            let token = media_token_of(image);
            for c in 0..chunks.len() {
                let Some(chunk) = chunks.get(c) else { continue };
                match chunk.chunk_type() {
                    MtmdInputChunkType::Text => {
                        let tokens = chunk.text_tokens().unwrap_or_default();
                        prompt.tokens.extend(tokens.iter().map(|t| t.0));
                    }
                    MtmdInputChunkType::Image | MtmdInputChunkType::Audio => {
                        let n = chunk.n_tokens();
                        prompt.tokens.extend(std::iter::repeat_n(token, n));
                    }
                }
            }
            prompt.media.push(Media {
                at,
                len: prompt.tokens.len() - at,
                block: String::new(),
                unit: Arc::new(chunks),
            });
        }
        Ok(prompt)
    }

    fn describe(&self) -> String {
        self.path
            .file_name()
            .map_or_else(|| "mmproj".into(), |n| n.to_string_lossy().into_owned())
    }
}

pub(crate) fn lock(mtmd: &Mutex<MtmdContext>) -> MutexGuard<'_, MtmdContext> {
    match mtmd.lock() {
        Ok(guard) => guard,
        // A panic elsewhere left it; the context itself is intact.
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Compute one image's stretch of `seq` from its chunks (what [`LlamaVision`] made).
pub(crate) fn eval(
    mtmd: &Mutex<MtmdContext>,
    context: &mut llama_cpp_2::context::LlamaContext<'static>,
    seq: i32,
    media: &Media,
    n_batch: i32,
) -> Result<(), pensieve_engine::RunnerError> {
    use pensieve_engine::RunnerError;
    let Some(chunks) = media.unit.downcast_ref::<MtmdInputChunks>() else {
        return Err(RunnerError::Failed(
            "an image prepared for another backend".into(),
        ));
    };
    let at =
        i32::try_from(media.at).map_err(|_| RunnerError::Failed("position out of range".into()))?;
    let mut mtmd = lock(mtmd);
    match chunks.eval_chunks(&mut mtmd, context, at, seq, n_batch, false) {
        Ok(_) => Ok(()),
        // llama_decode's own code for "no room in the KV cache".
        Err(llama_cpp_2::mtmd::MtmdEvalError::EvalFailure(1)) => Err(RunnerError::CacheFull),
        Err(e) => Err(RunnerError::Failed(format!("computing an image: {e}"))),
    }
}
