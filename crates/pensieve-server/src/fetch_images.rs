//! Images given by http(s) URL, fetched for a model that sees images when the server
//! runs with `--allow-image-urls`. Off by default: then the server makes no network calls
//! of its own, and such an image stays a placeholder.

use std::sync::OnceLock;
use std::time::Duration;

use pensieve_engine::GenerateRequest;
use pensieve_protocol::anthropic::ErrorKind;
use pensieve_protocol::image::{from_bytes, MAX_IMAGE_BYTES};

use crate::error::ApiError;

/// How long one image may take to arrive.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetch every image of `request` given by URL, in turn. A URL that does not answer with
/// an image within the limits is a 400 naming its block.
pub async fn fetch_images(request: &mut GenerateRequest) -> Result<(), ApiError> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(reqwest::Client::new);
    for image in &mut request.images {
        let Some(url) = image.url.clone().filter(|_| image.data.is_none()) else {
            continue;
        };
        let refused = |why: String| {
            let mut e = ApiError::new(ErrorKind::InvalidRequest, format!("{}: {why}", image.at));
            e.param = Some(image.at.clone());
            e
        };
        let bytes = fetch(client, &url)
            .await
            .map_err(|why| refused(format!("the image at {url} could not be fetched: {why}")))?;
        // The same checks as an inline image's. The summary stays the URL: the
        // placeholder that marks the image's place in its message names it so.
        let fetched = from_bytes(&bytes, &image.at).map_err(|e| {
            let mut e = ApiError::new(ErrorKind::InvalidRequest, e);
            e.param = Some(image.at.clone());
            e
        })?;
        tracing::debug!(at = %image.at, bytes = bytes.len(), "image fetched");
        image.data = fetched.data;
    }
    Ok(())
}

/// The body at `url`, at most [`MAX_IMAGE_BYTES`] of it.
async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url)
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("it answered {status}"));
    }
    let too_large = || format!("it is over {} MB", MAX_IMAGE_BYTES / (1024 * 1024));
    if response
        .content_length()
        .is_some_and(|n| n > MAX_IMAGE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_IMAGE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
