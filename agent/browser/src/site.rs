//! The reference site: a login flow, a heavy page and a form, served on loopback for the
//! tests, the demo and the benchmark. A small HTTP/1.1 server with keep-alive; Nagle is
//! off and each response goes out in one write, so no 40 ms stalls skew the timings.

use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the login API takes to answer, like a real back end would.
const LOGIN_API_DELAY: Duration = Duration::from_millis(150);
const DASHBOARD_ROWS: usize = 2000;
const HEAVY_IMAGES: usize = 40;
const HEAVY_SCRIPTS: usize = 12;
const HEAVY_STYLES: usize = 12;
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Serves the reference site until the task is dropped (or accepting fails).
pub async fn serve_reference_site(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream).await {
                tracing::debug!(error = %e, "reference site connection ended");
            }
        });
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    keep_alive: bool,
}

async fn serve_connection(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let (status, content_type, body) = route(&request).await;
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}\r\n",
            body.len(),
            if request.keep_alive { "Connection: keep-alive\r\n" } else { "Connection: close\r\n" },
        )
        .into_bytes();
        response.extend_from_slice(&body);
        stream.write_all(&response).await?;
        if !request.keep_alive {
            return Ok(());
        }
    }
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Request>> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Err(invalid("request headers too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or("/").to_string();
    let mut length = 0usize;
    let mut keep_alive = true;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().map_err(|_| invalid("bad content-length"))?,
            "connection" => keep_alive = !value.trim().eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    if length > MAX_REQUEST_BYTES {
        return Err(invalid("request body too large"));
    }
    while buf.len() < header_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[header_end..header_end + length].to_vec();
    buf.drain(..header_end + length);
    Ok(Some(Request { method, path, body, keep_alive }))
}

/// How long the stamped result page's image takes: its load event comes this late.
const SLOW_IMAGE_DELAY: Duration = Duration::from_millis(300);

/// A page that stamps its own events with the page clock (for checking baton's interaction
/// timing against it): the button's first pointerdown, in sessionStorage as `siteInputAt`;
/// its click navigates to the result page.
const STAMPED: &str = r#"<!doctype html><html><head><title>Stamped</title></head><body>
<button id="go">Go</button>
<script>
sessionStorage.removeItem('siteInputAt'); sessionStorage.removeItem('siteAppendedAt');
document.getElementById('go').addEventListener('pointerdown', e => {
  if (!sessionStorage.getItem('siteInputAt')) sessionStorage.setItem('siteInputAt', String(performance.timeOrigin + e.timeStamp));
}, true);
document.getElementById('go').addEventListener('click', () => { location.href = '/stamped/result'; });
</script></body></html>"#;

/// The result: 500 rows, then `#result`; the page stamps when `#result` is appended
/// (`siteAppendedAt`) with a MutationObserver of its own, set up in its head. An image that
/// takes [`SLOW_IMAGE_DELAY`] holds the load event back, as a slow resource does on a real
/// page.
fn stamped_result() -> String {
    let rows: String = (1..=500).map(|i| format!("<tr><td>{i}</td><td>row {i}</td></tr>")).collect();
    format!(
        "<!doctype html><html><head><title>Result</title><script>\
         new MutationObserver((_, o) => {{ if (document.getElementById('result')) {{\
         sessionStorage.setItem('siteAppendedAt', String(performance.timeOrigin + performance.now())); o.disconnect(); }} }})\
         .observe(document, {{ childList: true, subtree: true }});</script></head>\
         <body><img src=\"/stamped/slow.svg\" width=\"20\" height=\"20\"><table>{rows}</table><p id=\"result\">Done</p></body></html>"
    )
}

async fn route(req: &Request) -> (&'static str, &'static str, Vec<u8>) {
    const HTML: &str = "text/html; charset=utf-8";
    let path = req.path.split('?').next().unwrap_or("/");
    match (req.method.as_str(), path) {
        ("GET", "/") => ("200 OK", HTML, INDEX.into()),
        ("GET", "/login" | "/dashboard") => ("200 OK", HTML, LOGIN.into()),
        ("POST", "/api/login") => {
            tokio::time::sleep(LOGIN_API_DELAY).await;
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let user = body["username"].as_str().unwrap_or_default();
            let password = body["password"].as_str().unwrap_or_default();
            if user.is_empty() || password.is_empty() {
                ("401 Unauthorized", "application/json", br#"{"error":"username and password are required"}"#.to_vec())
            } else {
                (
                    "200 OK",
                    "application/json",
                    serde_json::json!({"user": user, "rows": DASHBOARD_ROWS}).to_string().into_bytes(),
                )
            }
        }
        ("GET", "/heavy") => ("200 OK", HTML, heavy_page().into_bytes()),
        ("GET", "/form") => ("200 OK", HTML, FORM.into()),
        ("GET", "/stamped") => ("200 OK", HTML, STAMPED.into()),
        ("GET", "/stamped/result") => ("200 OK", HTML, stamped_result().into_bytes()),
        ("GET", "/stamped/slow.svg") => {
            tokio::time::sleep(SLOW_IMAGE_DELAY).await;
            ("200 OK", "image/svg+xml", image("/static/img/0.svg").into_bytes())
        }
        ("GET", p) if p.starts_with("/static/img/") => ("200 OK", "image/svg+xml", image(p).into_bytes()),
        ("GET", p) if p.starts_with("/static/js/") => ("200 OK", "text/javascript", script(p).into_bytes()),
        ("GET", p) if p.starts_with("/static/css/") => ("200 OK", "text/css", style(p).into_bytes()),
        _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
    }
}

const INDEX: &str = r#"<!doctype html><html><head><title>baton reference site</title></head><body>
<h1>baton reference site</h1><ul><li><a href="/login">Login</a></li><li><a href="/heavy">Heavy page</a></li><li><a href="/form">Form</a></li></ul>
</body></html>"#;

const LOGIN: &str = r#"<!doctype html><html><head><title>Login</title>
<style>body{font-family:sans-serif;margin:2em}label{display:block;margin:.5em 0}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>
</head><body><main id="app">
<h1>Sign in</h1>
<form id="login" onsubmit="return false">
<label>Username <input id="username" name="username" autocomplete="off"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button type="button" id="login-button">Login</button>
<p id="error" role="alert"></p>
</form></main>
<script>
document.getElementById('login-button').addEventListener('click', async () => {
  const username = document.getElementById('username').value;
  const password = document.getElementById('password').value;
  const res = await fetch('/api/login', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify({username, password})});
  const data = await res.json();
  if (!res.ok) { document.getElementById('error').textContent = data.error; return; }
  const rows = [];
  for (let i = 1; i <= data.rows; i++) {
    rows.push('<tr><td>' + i + '</td><td>ORD-' + (100000 + i) + '</td><td>' + ['open', 'paid', 'shipped'][i % 3] + '</td><td>' + (i * 7.31).toFixed(2) + '</td></tr>');
  }
  history.pushState({}, '', '/dashboard');
  document.title = 'Dashboard';
  document.getElementById('app').innerHTML = '<section id="dashboard"><h1>Dashboard</h1><p id="welcome">Welcome, ' +
    username.replace(/[<&>]/g, '') + '</p><table id="orders"><thead><tr><th>#</th><th>Order</th><th>Status</th><th>Total</th></tr></thead><tbody>' +
    rows.join('') + '</tbody></table></section>';
});
</script></body></html>"#;

const FORM: &str = r#"<!doctype html><html><head><title>Form</title></head><body>
<h1>Order form</h1>
<form id="order" onsubmit="event.preventDefault(); document.getElementById('result').textContent = 'Submitted: ' + new URLSearchParams(new FormData(this)).toString();">
<label>Name <input name="name" id="name" required></label>
<label>Email <input name="email" id="email" type="email"></label>
<label>Quantity <input name="quantity" id="quantity" type="number" min="1" value="1"></label>
<label>Date <input name="date" id="date" type="date"></label>
<label>Size <select name="size" id="size"><option>Small</option><option>Medium</option><option>Large</option></select></label>
<label><input type="checkbox" name="gift" id="gift"> Gift wrap</label>
<label><input type="radio" name="shipping" value="standard" checked> Standard</label>
<label><input type="radio" name="shipping" value="express"> Express</label>
<label>Notes <textarea name="notes" id="notes"></textarea></label>
<button type="submit" id="submit">Place order</button>
</form><p id="result"></p></body></html>"#;

fn heavy_page() -> String {
    let mut html = String::from("<!doctype html><html><head><title>Heavy page</title>");
    for i in 0..HEAVY_STYLES {
        let _ = write!(html, r#"<link rel="stylesheet" href="/static/css/{i}.css">"#);
    }
    html.push_str("</head><body><h1>Heavy page</h1><div class=\"grid\">");
    for i in 0..HEAVY_IMAGES {
        let _ = write!(html, r#"<img src="/static/img/{i}.svg" width="160" height="120" alt="tile {i}">"#);
    }
    html.push_str("</div>");
    for i in 0..HEAVY_SCRIPTS {
        let _ = write!(html, r#"<script src="/static/js/{i}.js"></script>"#);
    }
    html.push_str("</body></html>");
    html
}

fn asset_number(path: &str) -> usize {
    path.rsplit('/').next().and_then(|f| f.split('.').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn image(path: &str) -> String {
    let n = asset_number(path);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120"><rect width="160" height="120" fill="hsl({},60%,70%)"/>"#,
        n * 37 % 360
    );
    for k in 0..40 {
        let _ = write!(
            svg,
            r#"<circle cx="{}" cy="{}" r="{}" fill="hsl({},50%,50%)" opacity=".5"/>"#,
            (k * 13 + n) % 160,
            (k * 29 + n) % 120,
            3 + k % 9,
            (k * 53 + n) % 360
        );
    }
    svg.push_str("</svg>");
    svg
}

fn script(path: &str) -> String {
    let n = asset_number(path);
    // Some parse and run work, like a real bundle chunk.
    let mut js = format!(
        "window.__heavy = (window.__heavy || 0) + 1;\nfunction chunk{n}() {{ let s = 0; for (let i = 0; i < 20000; i++) s += i % {}; return s; }}\nchunk{n}();\n",
        n + 7
    );
    for k in 0..200 {
        let _ = writeln!(js, "var v{n}_{k} = {{ id: {k}, label: 'item {k} of chunk {n}', tags: ['a', 'b', 'c'] }};");
    }
    js
}

fn style(path: &str) -> String {
    let n = asset_number(path);
    let mut css = String::new();
    for k in 0..150 {
        let _ = writeln!(
            css,
            ".c{n}-{k} {{ margin: {}px; padding: {}px; color: hsl({}, 40%, 30%); }}",
            k % 7,
            k % 5,
            (k * 11) % 360
        );
    }
    css.push_str(".grid img { margin: 4px; }\n");
    css
}
