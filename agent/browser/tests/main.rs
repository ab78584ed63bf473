//! End-to-end tests of the browser engine with real Chromium, chromedriver and Xvfb.
//! They never skip: without chromium/chromedriver (or Xvfb for the desktop test) they
//! fail saying what to install. Tests run one at a time (they count processes).

mod common;
mod desktop;
mod failures;
mod login;
mod supervision;
