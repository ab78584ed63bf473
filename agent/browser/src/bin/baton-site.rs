//! `baton-site`: serves baton's reference site (login flow, heavy page, form) for the
//! demo, the examples and the benchmark. `baton-site [--listen 127.0.0.1:8088]`.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut listen = "127.0.0.1:8088".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr,
            _ => {
                eprintln!("usage: baton-site [--listen 127.0.0.1:8088]");
                return ExitCode::from(2);
            }
        }
    }
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("baton-site: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("baton reference site on http://{listen}/ (login: /login, heavy page: /heavy, form: /form)");
    match baton_browser::serve_reference_site(listener).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baton-site: {e}");
            ExitCode::FAILURE
        }
    }
}
