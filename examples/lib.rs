//! Runnable examples live beside this file.
