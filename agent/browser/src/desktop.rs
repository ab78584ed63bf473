//! Desktop input through enigo's X11 backend: OS-level typing, key chords, mouse moves
//! and clicks on the agent's X display.

use crate::error::BrowserError;
use enigo::{Button, Coordinate, Direction, Enigo, Key, Keyboard, Mouse, Settings};

/// The agent's X display, where headed browsers run and OS input goes.
#[derive(Debug, Clone)]
pub(crate) struct Desktop {
    display: String,
}

/// One piece of OS input.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    Text(String),
    Chord(Vec<String>),
    MoveTo { x: i32, y: i32 },
    Click { x: i32, y: i32, button: Button },
}

impl Desktop {
    pub(crate) fn new(display: String) -> Self {
        Self { display }
    }

    /// Sends the input on a blocking thread (X11 calls block).
    pub(crate) async fn send(&self, input: Input) -> Result<(), BrowserError> {
        let display = self.display.clone();
        tokio::task::spawn_blocking(move || send_blocking(&display, input))
            .await
            .map_err(|e| BrowserError::DesktopInput(format!("the input thread failed: {e}")))?
            .map_err(BrowserError::DesktopInput)
    }
}

fn send_blocking(display: &str, input: Input) -> Result<(), String> {
    let settings = Settings { x11_display: Some(display.to_string()), ..Settings::default() };
    let mut enigo = Enigo::new(&settings).map_err(|e| format!("cannot open display {display}: {e}"))?;
    let e = |err: enigo::InputError| err.to_string();
    match input {
        Input::Text(text) => {
            for c in text.chars() {
                type_char(&mut enigo, c).map_err(e)?;
            }
        }
        Input::Chord(keys) => {
            let keys: Vec<Key> = keys.iter().map(|k| key_named(k)).collect::<Result<_, _>>()?;
            for k in &keys {
                enigo.key(*k, Direction::Press).map_err(e)?;
            }
            for k in keys.iter().rev() {
                enigo.key(*k, Direction::Release).map_err(e)?;
            }
        }
        Input::MoveTo { x, y } => enigo.move_mouse(x, y, Coordinate::Abs).map_err(e)?,
        Input::Click { x, y, button } => {
            enigo.move_mouse(x, y, Coordinate::Abs).map_err(e)?;
            enigo.button(button, Direction::Click).map_err(e)?;
        }
    }
    Ok(())
}

/// Shifted US-layout characters are typed as Shift + the base key, so the page sees the
/// right key events (x11rb's direct keysym mapping can report `event.key` as "\0").
fn type_char(enigo: &mut Enigo, c: char) -> Result<(), enigo::InputError> {
    const SHIFTED: &str = "~!@#$%^&*()_+{}|:\"<>?";
    const BASE: &str = "`1234567890-=[]\\;',./";
    let base = if c.is_ascii_uppercase() {
        Some(c.to_ascii_lowercase())
    } else {
        SHIFTED.find(c).and_then(|i| BASE.chars().nth(i))
    };
    match (c, base) {
        ('\n', _) => enigo.key(Key::Return, Direction::Click),
        ('\t', _) => enigo.key(Key::Tab, Direction::Click),
        (_, Some(b)) => {
            enigo.key(Key::Shift, Direction::Press)?;
            let typed = enigo.key(Key::Unicode(b), Direction::Click);
            enigo.key(Key::Shift, Direction::Release)?;
            typed
        }
        (c, None) => enigo.key(Key::Unicode(c), Direction::Click),
    }
}

/// Maps a chord part (validated at submit against `KEY_NAMES`) to an enigo key.
fn key_named(name: &str) -> Result<Key, String> {
    let lower = name.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "ctrl" => Key::Control,
        "shift" => Key::Shift,
        "alt" => Key::Alt,
        "meta" => Key::Meta,
        "enter" => Key::Return,
        "tab" => Key::Tab,
        "escape" => Key::Escape,
        "backspace" => Key::Backspace,
        "delete" => Key::Delete,
        "space" => Key::Space,
        "up" => Key::UpArrow,
        "down" => Key::DownArrow,
        "left" => Key::LeftArrow,
        "right" => Key::RightArrow,
        "home" => Key::Home,
        "end" => Key::End,
        "pageup" => Key::PageUp,
        "pagedown" => Key::PageDown,
        "f1" => Key::F1,
        "f2" => Key::F2,
        "f3" => Key::F3,
        "f4" => Key::F4,
        "f5" => Key::F5,
        "f12" => Key::F12,
        _ => {
            let mut chars = name.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Key::Unicode(c.to_ascii_lowercase()),
                _ => return Err(format!("unknown key {name:?}")),
            }
        }
    })
}

/// The mouse button a spec names ("" means left).
pub(crate) fn button_named(name: &str) -> Button {
    match name {
        "right" => Button::Right,
        "middle" => Button::Middle,
        _ => Button::Left,
    }
}
