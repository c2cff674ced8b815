//! The terminal while an answer streams: a Ctrl-C must not discard what was printed.
//!
//! On the Ctrl-C that raises its SIGINT, a terminal's line discipline drops the output it
//! still holds unless NOFLSH is set; the last words printed (and kept as the answer) would
//! then never show. The flag is set for the answer, and the settings restored after it.

/// NOFLSH on the terminal of stdin until dropped; None where stdin is no terminal.
pub struct KeepOutputOnInterrupt {
    #[cfg(unix)]
    saved: libc::termios,
}

impl KeepOutputOnInterrupt {
    #[cfg(unix)]
    pub fn new() -> Option<KeepOutputOnInterrupt> {
        // SAFETY: tcgetattr fills the zeroed struct, or fails (stdin is no terminal).
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut keep = saved;
        keep.c_lflag |= libc::NOFLSH;
        // SAFETY: a termios read from this terminal, with one flag more.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &keep) } != 0 {
            return None;
        }
        Some(KeepOutputOnInterrupt { saved })
    }

    #[cfg(not(unix))]
    pub fn new() -> Option<KeepOutputOnInterrupt> {
        None
    }
}

#[cfg(unix)]
impl Drop for KeepOutputOnInterrupt {
    fn drop(&mut self) {
        // SAFETY: the settings this terminal had before.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
