//! An image as a client sends it: raw bytes (its header read by `imagesize` for the
//! placeholder), the same bytes as base64 and as a `data:` URL, and the input as text taken
//! for base64 data or a URL. Each either sums the image up or refuses it by its block.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use pensieve_protocol::image;

fuzz_target!(|data: &[u8]| {
    let at = "messages.0.content.0";
    let check = |read: Result<pensieve_engine::Image, String>| match read {
        Ok(image) => {
            assert_eq!(image.at, at);
            assert!(image.placeholder().contains(&image.summary));
        }
        Err(e) => assert!(e.starts_with(at), "{e}"),
    };
    check(image::from_bytes(data, at));
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let inline = image::from_base64(&encoded, at);
    // Decoding base64 gives back the same bytes: the same verdict.
    assert_eq!(inline.is_ok(), image::from_bytes(data, at).is_ok());
    check(inline);
    check(image::from_url(&format!("data:image/png;base64,{encoded}"), at));
    if let Ok(text) = std::str::from_utf8(data) {
        check(image::from_base64(text, at));
        check(image::from_url(text, at));
    }
});
