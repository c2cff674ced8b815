//! Images for a vision model served through mlx-vlm: a prompt with images becomes tokens with
//! each image's positions as media tokens (see [`pensieve_engine::media`]), laid out from
//! what the worker said at HELLO, so that no request thread waits on the worker; the engine
//! thread later sends each image's bytes to the worker (DECODE_MEDIA), which decodes and
//! computes it.

use std::sync::Arc;

use pensieve_engine::{
    media_token_of, Media, MediaPrompt, TokenId, Tokenizer, Vision, VisionError,
};

use crate::protocol::HelloVision;

/// What marks an image's place between the engine and [`MlxVision::tokenize`]: text no
/// template writes and no tokenizer has as a token (a client that writes it gets a 400).
const MARKER: &str = "<__pensieve_image__>";

/// An image's encoded bytes, as the worker decodes them (the [`Media`] unit of this engine;
/// a type of its own so that another backend's unit is never taken for one).
pub(crate) struct ImageBytes(pub Vec<u8>);

/// A vision model's images, laid out as mlx-vlm's processor lays them out.
pub struct MlxVision {
    tokenizer: Arc<dyn Tokenizer>,
    layout: HelloVision,
    model_type: String,
}

impl MlxVision {
    pub fn new(tokenizer: Arc<dyn Tokenizer>, layout: HelloVision, model_type: &str) -> Self {
        MlxVision {
            tokenizer,
            layout,
            model_type: model_type.to_owned(),
        }
    }
}

impl Vision for MlxVision {
    fn marker(&self) -> &str {
        MARKER
    }

    /// The whole text is tokenized at once with one image token per image (wrapped in the
    /// model's `before` / `after` text), as the processor tokenizes it: text next to an image
    /// merges into the same tokens as it would there. Each image token then becomes the
    /// image's positions.
    fn tokenize(&self, text: &str, images: &[&[u8]]) -> Result<MediaPrompt, VisionError> {
        let pieces: Vec<&str> = text.split(MARKER).collect();
        if pieces.len() != images.len() + 1 {
            // The marker written in the client's own text.
            return Err(VisionError::Prompt(format!(
                "messages: the text may not contain {MARKER}"
            )));
        }
        for (index, image) in images.iter().enumerate() {
            readable(image).map_err(|reason| VisionError::Image { index, reason })?;
        }
        let image_text = format!(
            "{}{}{}",
            self.layout.before, self.layout.image_token, self.layout.after
        );
        let tokens = self.tokenizer.encode(&pieces.join(&image_text));
        let mut prompt = MediaPrompt {
            tokens: Vec::with_capacity(tokens.len() + images.len() * self.layout.positions),
            media: Vec::with_capacity(images.len()),
        };
        let mut next = images.iter();
        for token in tokens {
            if token != self.layout.image_token_id {
                prompt.tokens.push(token);
                continue;
            }
            // More image tokens than images: the client wrote the model's own image token.
            let Some(image) = next.next() else {
                return Err(VisionError::Prompt(format!(
                    "messages: the text may not contain {}",
                    self.layout.image_token
                )));
            };
            let at = prompt.tokens.len();
            let token: TokenId = media_token_of(image);
            prompt
                .tokens
                .extend(std::iter::repeat_n(token, self.layout.positions));
            prompt.media.push(Media {
                at,
                len: self.layout.positions,
                block: String::new(),
                unit: Arc::new(ImageBytes(image.to_vec())),
            });
        }
        if next.next().is_some() {
            // The tokenizer did not keep the image token whole: no way to place the image.
            return Err(VisionError::Prompt(format!(
                "the tokenizer does not read {} as one token",
                self.layout.image_token
            )));
        }
        Ok(prompt)
    }

    fn describe(&self) -> String {
        format!(
            "{} through mlx-vlm {} ({} positions an image)",
            self.model_type, self.layout.mlx_vlm, self.layout.positions
        )
    }
}

/// Whether the worker's Pillow reads this format (the header was checked where the request
/// was parsed; Pillow decodes the rest, and refuses what it can't, in DECODE_MEDIA).
fn readable(image: &[u8]) -> Result<(), String> {
    use imagesize::ImageType as T;
    match imagesize::image_type(image) {
        Ok(T::Png | T::Jpeg | T::Gif | T::Webp | T::Bmp | T::Tiff | T::Ico | T::Tga | T::Pnm) => {
            Ok(())
        }
        Ok(other) => Err(format!(
            "{} images are not read on this engine; PNG, JPEG, GIF, WebP, BMP and TIFF are",
            format!("{other:?}").to_uppercase()
        )),
        Err(_) => Err("the data is not an image".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pensieve_engine::is_media_token;

    /// Words are tokens (ids from a table, in order of first sight, from 1); `<img>` is 99,
    /// `<s>` (BOS) 0 and put first, as a real tokenizer with add_bos does.
    struct Words;

    impl Tokenizer for Words {
        fn encode(&self, text: &str) -> Vec<TokenId> {
            let mut out = vec![0];
            for w in text.split_whitespace() {
                out.push(match w {
                    "<img>" => 99,
                    "<boi>" => 98,
                    "<eoi>" => 97,
                    w => w.bytes().map(TokenId::from).sum(),
                });
            }
            out
        }
        fn token_bytes(&self, _: TokenId) -> Vec<u8> {
            Vec::new()
        }
        fn is_end_of_generation(&self, _: TokenId) -> bool {
            false
        }
        fn single_token(&self, _: &str) -> Option<TokenId> {
            None
        }
        fn vocab_size(&self) -> usize {
            1000
        }
    }

    fn vision(before: &str, after: &str) -> MlxVision {
        let layout = HelloVision {
            image_token_id: 99,
            image_token: "<img>".into(),
            positions: 4,
            before: before.into(),
            after: after.into(),
            mlx_vlm: "0.7.10".into(),
        };
        MlxVision::new(Arc::new(Words), layout, "gemma3")
    }

    fn png(seed: u8) -> Vec<u8> {
        let mut data = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10\x08\x02\0\0\0".to_vec();
        data.push(seed);
        data
    }

    #[test]
    fn images_become_their_positions_between_the_wrapper_tokens() {
        let v = vision(" <boi> ", " <eoi> ");
        let (a, b) = (png(1), png(2));
        let text = format!("look {MARKER} and {MARKER} now");
        let p = v.tokenize(&text, &[&a, &b]).unwrap();
        let word = |w: &str| Words.encode(w)[1];
        let (ta, tb) = (p.tokens[3], p.tokens[10]);
        assert!(is_media_token(ta) && is_media_token(tb) && ta != tb);
        let mut expected = vec![0, word("look"), 98];
        expected.extend([ta; 4]);
        expected.extend([97, word("and"), 98]);
        expected.extend([tb; 4]);
        expected.extend([97, word("now")]);
        assert_eq!(p.tokens, expected);
        let stretches: Vec<_> = p.media.iter().map(|m| (m.at, m.len)).collect();
        assert_eq!(stretches, [(3, 4), (10, 4)]);
        // The unit is the image's bytes, for DECODE_MEDIA.
        let unit = p.media[1].unit.downcast_ref::<ImageBytes>().unwrap();
        assert_eq!(unit.0, b);
    }

    #[test]
    fn the_same_image_gets_the_same_tokens() {
        let v = vision("", "");
        let a = png(7);
        let text = format!("{MARKER} x {MARKER}");
        let p = v.tokenize(&text, &[&a, &a.clone()]).unwrap();
        assert_eq!(p.tokens[1..5], p.tokens[6..10]);
        let other = v.tokenize(&text, &[&a, &png(8)]).unwrap();
        assert_ne!(other.tokens[1], other.tokens[6]);
    }

    #[test]
    fn refusals_name_the_image_or_the_text() {
        let v = vision("", "");
        let a = png(1);
        // The client wrote the model's image token, or the marker.
        let e = v.tokenize(&format!("<img> {MARKER}"), &[&a]).unwrap_err();
        assert!(
            matches!(&e, VisionError::Prompt(m) if m.contains("<img>")),
            "{e}"
        );
        let e = v
            .tokenize(&format!("{MARKER} {MARKER}"), &[&a])
            .unwrap_err();
        assert!(
            matches!(&e, VisionError::Prompt(m) if m.contains(MARKER)),
            "{e}"
        );
        // Not an image, or a format the worker's Pillow does not read.
        let e = v
            .tokenize(&format!("{MARKER} {MARKER}"), &[&a, b"hello"])
            .unwrap_err();
        assert_eq!(
            e,
            VisionError::Image {
                index: 1,
                reason: "the data is not an image".into()
            }
        );
        let avif = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf";
        let e = v.tokenize(MARKER, &[&avif[..]]).unwrap_err();
        assert!(
            matches!(&e, VisionError::Image { index: 0, reason } if reason.contains("not read")),
            "{e}"
        );
    }
}
