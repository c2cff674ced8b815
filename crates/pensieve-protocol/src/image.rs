//! Images as the APIs send them (base64 data, `data:` URLs, other URLs), read as far as a
//! text-only model needs: checked to be an image of a known format within the size
//! limits, and summed up by its format and size for the placeholder the model reads
//! instead. Only the header is parsed (by `imagesize`); no pixels are decoded, and
//! nothing is fetched here (the HTTP edge fetches URLs where the server allows it).

use base64::Engine as _;
use pensieve_engine::Image;

/// The most bytes an image may have (OpenAI's limit; Anthropic's is 5 MB).
pub const MAX_IMAGE_BYTES: usize = 20 * 1024 * 1024;
/// The most pixels on either side (Anthropic refuses larger images).
pub const MAX_IMAGE_SIDE: usize = 8000;
/// A URL longer than this is cut in the placeholder.
const MAX_URL_SHOWN: usize = 200;

/// An image sent inline: `data` in base64, `media_type` as the client named it (the
/// bytes decide the format reported). `at` names the block in errors.
pub fn from_base64(data: &str, at: &str) -> Result<Image, String> {
    // Base64 takes 4 characters for 3 bytes: refuse an oversized image before decoding it.
    if data.len() / 4 * 3 > MAX_IMAGE_BYTES + 3 {
        return Err(too_large(at, data.len() / 4 * 3));
    }
    // Lenient as decoders of mail and the web are: line breaks (base64 wrapped at 76
    // columns) and missing padding are accepted.
    let data = if data.bytes().any(|b| b.is_ascii_whitespace()) {
        std::borrow::Cow::Owned(data.split_ascii_whitespace().collect::<String>())
    } else {
        std::borrow::Cow::Borrowed(data)
    };
    let bytes = BASE64
        .decode(data.as_bytes())
        .map_err(|e| format!("{at}: the image's data is not valid base64 ({e})"))?;
    from_bytes(&bytes, at)
}

/// Standard base64, padded or not.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// An image given by URL: a `data:` URL is read as inline data; any other is not fetched
/// (the server makes no network calls of its own) and is summed up by its address.
pub fn from_url(url: &str, at: &str) -> Result<Image, String> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((head, data)) = rest.split_once(',') else {
            return Err(format!("{at}: a data: URL without a comma"));
        };
        if !head.ends_with(";base64") {
            return Err(format!("{at}: a data: URL of an image must be base64"));
        }
        return from_base64(data, at);
    }
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!(
            "{at}: an image URL must be http(s) or a base64 data: URL"
        ));
    }
    let shown: String = url.chars().take(MAX_URL_SHOWN).collect();
    let cut = if shown.len() < url.len() { "…" } else { "" };
    Ok(Image {
        at: at.to_owned(),
        summary: format!("{shown}{cut}"),
        data: None,
        url: Some(url.to_owned()),
    })
}

/// An image held by the client's file store (Anthropic's Files API), which this server
/// does not have: summed up by its id.
pub fn from_file_id(file_id: &str, at: &str) -> Image {
    Image {
        at: at.to_owned(),
        summary: format!("file {file_id}"),
        data: None,
        url: None,
    }
}

/// Decoded bytes: a PNG, JPEG, GIF or WebP (or another format `imagesize` reads) within
/// the limits.
pub fn from_bytes(bytes: &[u8], at: &str) -> Result<Image, String> {
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(too_large(at, bytes.len()));
    }
    let not_image =
        || format!("{at}: the data is not an image of a known format (PNG, JPEG, GIF or WebP)");
    let format = imagesize::image_type(bytes).map_err(|_| not_image())?;
    let size = imagesize::blob_size(bytes).map_err(|_| not_image())?;
    let (width, height) = (size.width, size.height);
    if width == 0 || height == 0 {
        return Err(format!("{at}: the image is {width}×{height} pixels"));
    }
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(format!(
            "{at}: the image is {width}×{height} pixels; at most {MAX_IMAGE_SIDE} on a side"
        ));
    }
    Ok(Image {
        at: at.to_owned(),
        summary: format!("{} {width}×{height}", format_name(format)),
        data: Some(bytes.into()),
        url: None,
    })
}

fn too_large(at: &str, bytes: usize) -> String {
    format!(
        "{at}: the image is {:.1} MB; at most {} MB",
        bytes as f64 / 1e6,
        MAX_IMAGE_BYTES / (1024 * 1024)
    )
}

fn format_name(format: imagesize::ImageType) -> String {
    use imagesize::ImageType as T;
    match format {
        T::Png => "PNG".into(),
        T::Jpeg => "JPEG".into(),
        T::Gif => "GIF".into(),
        T::Webp => "WebP".into(),
        T::Bmp => "BMP".into(),
        T::Tiff => "TIFF".into(),
        // The rest by their variant's name, upper-cased (HEIF, AVIF, ICO, ...).
        other => format!("{other:?}").to_uppercase(),
    }
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
