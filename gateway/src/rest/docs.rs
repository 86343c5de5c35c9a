//! The `/docs` page: Swagger UI (vendored from npm `swagger-ui-dist`, see
//! `swagger-ui/README.md`) rendering `/openapi.json`. Every asset is
//! compiled into the binary, so the page needs no internet access.

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};

/// The page itself: Swagger UI configured for our document, with the
/// online validator badge turned off (it would call out to swagger.io).
const INDEX: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>REST API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
  <style>body { margin: 0; background: #fafafa; }</style>
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      docExpansion: "list",
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    });
  </script>
</body>
</html>
"##;

/// `(file name, content type, bytes)` of every asset under `/docs/`.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "swagger-ui-bundle.js",
        "text/javascript; charset=utf-8",
        include_bytes!("swagger-ui/swagger-ui-bundle.js"),
    ),
    (
        "swagger-ui.css",
        "text/css; charset=utf-8",
        include_bytes!("swagger-ui/swagger-ui.css"),
    ),
    (
        "LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("swagger-ui/LICENSE"),
    ),
    (
        "NOTICE",
        "text/plain; charset=utf-8",
        include_bytes!("swagger-ui/NOTICE"),
    ),
    (
        "swagger-ui-bundle.js.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("swagger-ui/swagger-ui-bundle.js.LICENSE.txt"),
    ),
];

/// The response for `path` when it is part of the docs page (`/docs`,
/// `/docs/`, `/docs/<asset>`), else `None`.
pub fn page(path: &str) -> Option<Response> {
    if path == "/docs" || path == "/docs/" {
        return Some(asset(
            "text/html; charset=utf-8",
            INDEX.as_bytes(),
            "no-cache",
        ));
    }
    let name = path.strip_prefix("/docs/")?;
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, bytes)| asset(content_type, bytes, "public, max-age=86400"))
}

fn asset(content_type: &'static str, bytes: &'static [u8], cache: &'static str) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}
