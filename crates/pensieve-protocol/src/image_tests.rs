use base64::Engine as _;

use super::*;

/// The start of a PNG file: its signature and IHDR chunk (all `imagesize` reads).
pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    b.extend(width.to_be_bytes());
    b.extend(height.to_be_bytes());
    b.extend([8, 6, 0, 0, 0, 0, 0, 0, 0]);
    b
}

pub(crate) fn png_base64(width: u32, height: u32) -> String {
    base64::engine::general_purpose::STANDARD.encode(png(width, height))
}

#[test]
fn an_inline_png_is_summed_up_by_format_and_size() {
    let image = from_base64(&png_base64(1280, 720), "messages.0.content.1").unwrap();
    assert_eq!(image.at, "messages.0.content.1");
    assert_eq!(image.summary, "PNG 1280×720");
    assert_eq!(
        image.placeholder(),
        "[image: PNG 1280×720, not shown: this model has no vision]"
    );
}

#[test]
fn the_bytes_decide_the_format_not_the_media_type() {
    let gif = b"GIF89a\x40\x01\xf0\x00\x00\x00\x00";
    assert_eq!(from_bytes(gif, "x").unwrap().summary, "GIF 320×240");
}

#[test]
fn a_data_url_is_read_as_inline_data() {
    let url = format!("data:image/png;base64,{}", png_base64(64, 32));
    assert_eq!(from_url(&url, "x").unwrap().summary, "PNG 64×32");
    let err = from_url("data:image/png,rawbytes", "messages[0].content[1]").unwrap_err();
    assert!(err.starts_with("messages[0].content[1]: "), "{err}");
    assert!(from_url("data:image/png;base64", "x").is_err());
}

#[test]
fn other_urls_are_not_fetched_but_named() {
    let image = from_url("https://example.com/cat.png", "x").unwrap();
    assert_eq!(image.summary, "https://example.com/cat.png");
    let long = format!("https://example.com/{}", "a".repeat(500));
    let summary = from_url(&long, "x").unwrap().summary;
    assert!(summary.ends_with('…') && summary.chars().count() == MAX_URL_SHOWN + 1);
    for url in ["", "x", "file:///etc/passwd", "ftp://example.com/a.png"] {
        assert!(from_url(url, "x").unwrap_err().contains("http(s)"), "{url}");
    }
}

#[test]
fn bad_images_are_refused_naming_their_block() {
    let at = "messages.3.content.0.content.1";
    for (data, says) in [
        ("not base64!".to_owned(), "not valid base64"),
        (
            base64::engine::general_purpose::STANDARD.encode(b"hello, world"),
            "not an image",
        ),
        (png_base64(9000, 10), "9000×10 pixels; at most 8000"),
        (png_base64(0, 10), "0×10 pixels"),
    ] {
        let err = from_base64(&data, at).unwrap_err();
        assert!(err.starts_with(&format!("{at}: ")), "{err}");
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn an_oversized_image_is_refused_before_decoding() {
    let data = "A".repeat(MAX_IMAGE_BYTES / 3 * 4 + 64);
    let err = from_base64(&data, "x").unwrap_err();
    assert!(err.contains("at most 20 MB"), "{err}");
}

#[test]
fn a_truncated_header_is_not_an_image() {
    let mut b = png(10, 10);
    b.truncate(12);
    assert!(from_bytes(&b, "x").unwrap_err().contains("not an image"));
    assert!(from_bytes(&[], "x").is_err());
}

#[test]
fn wrapped_or_unpadded_base64_is_read() {
    // 34 bytes: base64 pads them.
    let mut bytes = png(7, 5);
    bytes.push(0);
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    let wrapped: String = data
        .as_bytes()
        .chunks(10)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect();
    assert_eq!(from_base64(&wrapped, "x").unwrap().summary, "PNG 7×5");
    let unpadded = data.trim_end_matches('=');
    assert_ne!(
        unpadded.len(),
        data.len(),
        "test premise: the data is padded"
    );
    assert_eq!(from_base64(unpadded, "x").unwrap().summary, "PNG 7×5");
}
