//! Prompt assembly for reuse: what every session of a user sends alike comes first, what
//! one project or one day sends comes after it, so a new session finds all of the former
//! in the prefix cache.
//!
//! Agents name the project and the day in one of two places:
//! - an environment turn: a `system` turn after the user's, which rendering moves to the
//!   head of the first user turn. Claude Code and the Claude Agent SDK send one (~9k
//!   characters, the same everywhere but for the lines naming the working directory,
//!   whether it is a git repository and today's date); Claude Code's system prompt also
//!   names the project in its `# Memory` section (`~/.claude/projects/-path/memory/`),
//!   halfway through the prompt and so in front of the tools, which templates write
//!   after it;
//! - the system prompt itself: opencode ends it with an `<env>` block (working
//!   directory, workspace root, git repository, date), again in front of the tools.
//!
//! Both are found by content, not by client: a line whose label names the working
//! directory and whose value is an absolute path. Rendered as sent, a session in another
//! project shares only the text before the first such mention with the sessions before
//! it. So the system prompt's `# ` sections that name the project or state the date move
//! after the tools: into the environment turn when there is one, after its lines that
//! are the same everywhere and before those that name the project or the day; else to
//! the head of the first user turn, where an environment turn would have gone. The model
//! still reads every word; only where it reads a few of them changes. Conversations that
//! name no working directory are left as they are.

use crate::request::{Message, Role};

/// The conversation with the parts that name the project or the day moved after those
/// that do not; `None` when it names no working directory, or nothing moves. A
/// `preamble_mark` (a cache breakpoint's, see [`super::breakpoints`]) goes where the
/// parts that are the same for every session end.
pub(crate) fn stable_first(
    messages: &[Message],
    preamble_mark: Option<&str>,
) -> Option<Vec<Message>> {
    let env_at = messages
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, m)| m.role == Role::System && working_directory(&m.content).is_some())
        .map(|(i, _)| i);
    let has_system = messages.first().is_some_and(|m| m.role == Role::System);
    let project = match env_at {
        Some(i) => working_directory(&messages[i].content),
        None if has_system => working_directory(&messages[0].content),
        None => None,
    }?;
    let names_project = |text: &str| project.iter().any(|p| text.contains(p.as_str()));

    let mut out = messages.to_vec();
    let mut moved = String::new();
    if has_system {
        // Without an environment turn the system prompt is where the client appends
        // what it gathers per session (opencode: the environment, then the project's
        // AGENTS.md, whose own headings name no path), so all that follows the first
        // section naming the project or the day moves with it, in order.
        let (kept, volatile) = split_sections(
            &out[0].content,
            &|section: &str| names_project(section) || section.lines().any(states_the_date),
            env_at.is_none(),
        );
        // A prompt that is one section naming the project stays whole: moving all of it
        // would leave the model without a system prompt.
        if !volatile.is_empty() && !kept.trim().is_empty() {
            // The prompt keeps the end it had, not the blank lines before a moved section.
            let text = &out[0].content;
            let end = &text[text.trim_end().len()..];
            out[0].content = format!("{}{end}", kept.trim_end());
            moved = volatile;
        }
    }
    let Some(env_at) = env_at else {
        // No environment turn: what moved opens the first user turn.
        let first_user = out.iter().position(|m| m.role == Role::User)?;
        let moved = moved.trim_matches('\n');
        if moved.is_empty() {
            return None;
        }
        let mark = preamble_mark.unwrap_or_default();
        let user = &mut out[first_user].content;
        *user = if user.is_empty() {
            format!("{mark}{moved}")
        } else {
            format!("{mark}{moved}\n\n{user}")
        };
        return Some(out);
    };
    let env = &out[env_at].content;
    let (mut stable, mut volatile) = (Vec::new(), Vec::new());
    for line in env.split('\n') {
        if names_project(line) || varies_between_sessions(line) {
            volatile.push(line);
        } else {
            stable.push(line);
        }
    }
    let mut reordered = stable.join("\n").trim_end().to_owned();
    let volatile = volatile.join("\n");
    let mut mark = preamble_mark;
    for part in [moved.as_str(), volatile.as_str()].map(|p| p.trim_matches('\n')) {
        if !part.is_empty() {
            reordered.push_str("\n\n");
            reordered.push_str(mark.take().unwrap_or_default());
            reordered.push_str(part);
        }
    }
    if reordered == *env {
        return None;
    }
    out[env_at].content = reordered;
    Some(out)
}

/// A line's label and value when it reads `label: value`, the label trimmed of list
/// marks and indentation and short enough to be one.
fn labelled(line: &str) -> Option<(&str, &str)> {
    let (label, value) = line.split_once(':')?;
    let label = label.trim_start_matches([' ', '\t', '-', '*']).trim_end();
    (!label.is_empty() && label.len() <= 40).then_some((label, value.trim()))
}

/// Whether a value is an absolute path (Unix, or Windows with a drive letter).
fn is_absolute_path(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.starts_with('/')
        || (bytes.len() >= 3
            && bytes[0].is_ascii_alphabetic()
            && bytes[1] == b':'
            && matches!(bytes[2], b'\\' | b'/'))
}

/// Whether a line states today's date ("Today's date is 2026-12-03.", opencode's
/// "Today's date: Thu Dec 03 2026").
fn states_the_date(line: &str) -> bool {
    let line = line
        .trim_start_matches([' ', '\t', '-', '*'])
        .to_ascii_lowercase();
    ["today's date", "today is ", "current date"]
        .iter()
        .any(|p| line.starts_with(p))
}

/// Whether an environment line differs between projects or days even when it does not
/// name the working directory: the date, whether the directory is a git repository,
/// and other paths (opencode's workspace root is `/` outside a repository).
fn varies_between_sessions(line: &str) -> bool {
    states_the_date(line)
        || labelled(line).is_some_and(|(label, value)| {
            label.to_ascii_lowercase().contains("git repo") || is_absolute_path(value)
        })
}

/// The working directory a text names on a line labelled with it ("Primary working
/// directory: /work/app", "Working directory: /work/app"), as written and as Claude
/// Code encodes it in folder names (every character but letters and digits a `-`).
fn working_directory(text: &str) -> Option<Vec<String>> {
    let dir = text.lines().find_map(|line| {
        let (label, dir) = labelled(line)?;
        (label.to_ascii_lowercase().contains("working directory") && is_absolute_path(dir))
            .then_some(dir)
    })?;
    if dir.len() < 2 {
        return None;
    }
    let encoded: String = dir
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Some(vec![dir.to_owned(), encoded])
}

/// Splits markdown text at its top-level headings (`# `) into the sections `volatile`
/// does not flag, as they were, and those it flags, joined in order; with `tail`, every
/// section from the first flagged one on counts as flagged.
fn split_sections(text: &str, volatile: &impl Fn(&str) -> bool, tail: bool) -> (String, String) {
    let mut starts: Vec<usize> = text.match_indices("\n# ").map(|(at, _)| at + 1).collect();
    starts.insert(0, 0);
    starts.push(text.len());
    let (mut kept, mut moved) = (String::new(), String::new());
    for bounds in starts.windows(2) {
        let section = &text[bounds[0]..bounds[1]];
        if (tail && !moved.is_empty()) || volatile(section) {
            moved.push_str(section);
        } else {
            kept.push_str(section);
        }
    }
    (kept, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "You are an agent.\n\n# Harness\nUse the tools.\n\n# Memory\n\nYou have a memory at `/home/u/.claude/projects/-work-app/memory/`.\nWrite facts there.\n\n# Environment\n - Models are Claude 5.\n";
    const ENV: &str = "# Environment\nYou have been invoked in the following environment: \n - Primary working directory: /work/app\n - Is a git repository: true\n - Platform: linux\n\nSkills: dataviz, code-review.\nToday's date is 2026-12-03.";

    fn conversation(system: &str, env: &str) -> Vec<Message> {
        vec![
            Message::text(Role::System, system),
            Message::text(Role::User, "say hi"),
            Message::text(Role::System, env),
        ]
    }

    #[test]
    fn what_names_the_project_or_the_day_comes_last() {
        let out = stable_first(&conversation(SYSTEM, ENV), None).expect("reordered");
        assert_eq!(
            out[0].content,
            "You are an agent.\n\n# Harness\nUse the tools.\n\n# Environment\n - Models are Claude 5.\n"
        );
        assert_eq!(out[1].content, "say hi");
        assert_eq!(
            out[2].content,
            "# Environment\nYou have been invoked in the following environment: \n - Platform: linux\n\nSkills: dataviz, code-review.\n\n# Memory\n\nYou have a memory at `/home/u/.claude/projects/-work-app/memory/`.\nWrite facts there.\n\n - Primary working directory: /work/app\n - Is a git repository: true\nToday's date is 2026-12-03."
        );
    }

    #[test]
    fn every_line_is_kept() {
        let out = stable_first(&conversation(SYSTEM, ENV), None).expect("reordered");
        let mut before: Vec<&str> = SYSTEM.lines().chain(ENV.lines()).collect();
        let joined = format!("{}\n{}", out[0].content, out[2].content);
        let mut after: Vec<&str> = joined.lines().collect();
        before.retain(|l| !l.is_empty());
        after.retain(|l| !l.is_empty());
        before.sort_unstable();
        after.sort_unstable();
        assert_eq!(before, after);
    }

    #[test]
    fn two_projects_on_two_days_share_the_system_prompt_and_most_of_the_environment() {
        let other_env = ENV
            .replace("/work/app", "/src/other")
            .replace("2026-12-03", "2027-01-15")
            .replace("repository: true", "repository: false");
        let other_system = SYSTEM.replace("-work-app", "-src-other");
        let a = stable_first(&conversation(SYSTEM, ENV), None).expect("reordered");
        let b = stable_first(&conversation(&other_system, &other_env), None).expect("reordered");
        assert_eq!(a[0].content, b[0].content);
        let shared = a[2]
            .content
            .chars()
            .zip(b[2].content.chars())
            .take_while(|(x, y)| x == y)
            .count();
        assert!(a[2].content[..shared].ends_with(
            "code-review.\n\n# Memory\n\nYou have a memory at `/home/u/.claude/projects/-"
        ));
    }

    #[test]
    fn conversations_without_an_environment_turn_are_left_alone() {
        assert!(stable_first(&conversation(SYSTEM, "Be brief."), None).is_none());
        let no_env = vec![
            Message::text(Role::System, SYSTEM),
            Message::text(Role::User, "q"),
        ];
        assert!(stable_first(&no_env, None).is_none());
        // A leading system turn is not an environment turn to reorder.
        let leading = vec![
            Message::text(Role::System, ENV),
            Message::text(Role::User, "q"),
        ];
        assert!(stable_first(&leading, None).is_none());
    }

    /// opencode's shape: no environment turn; the system prompt ends with an `<env>`
    /// block naming the project and the day, in front of the tools.
    const OPENCODE: &str = "You are opencode.\n\n# Tone\nBe brief.\n\n# Code References\nCite `file:line`.\n\nHere is some useful information about the environment you are running in:\n<env>\n  Working directory: /work/app\n  Workspace root folder: /work/app\n  Is directory a git repo: yes\n  Platform: linux\n  Today's date: Thu Dec 03 2026\n</env>\nSkills: customize-opencode.";

    fn opencode(system: &str) -> Vec<Message> {
        vec![
            Message::text(Role::System, system),
            Message::text(Role::User, "\"say hi\""),
        ]
    }

    #[test]
    fn without_an_environment_turn_the_section_naming_the_project_opens_the_first_user_turn() {
        let out = stable_first(&opencode(OPENCODE), None).expect("reordered");
        assert_eq!(out[0].content, "You are opencode.\n\n# Tone\nBe brief.");
        assert_eq!(
            out[1].content,
            format!(
                "{}\n\n\"say hi\"",
                &OPENCODE[OPENCODE.find("# Code References").expect("section")..]
            )
        );
    }

    #[test]
    fn what_follows_the_environment_in_the_system_prompt_moves_with_it() {
        let system = format!(
            "{OPENCODE}\nInstructions from: /work/app/AGENTS.md\n# Project rules\n\nUse tabs.\n"
        );
        let out = stable_first(&opencode(&system), None).expect("reordered");
        assert_eq!(out[0].content, "You are opencode.\n\n# Tone\nBe brief.\n");
        assert!(out[1].content.ends_with(
            "Instructions from: /work/app/AGENTS.md\n# Project rules\n\nUse tabs.\n\n\"say hi\""
        ));
        // With an environment turn, only the sections that name the project move.
        let out = stable_first(&conversation(&system, ENV), None).expect("reordered");
        assert_eq!(
            out[0].content,
            "You are opencode.\n\n# Tone\nBe brief.\n\n# Project rules\n\nUse tabs.\n"
        );
    }

    #[test]
    fn two_opencode_sessions_share_the_system_prompt() {
        let other = OPENCODE
            .replace("Working directory: /work/app", "Working directory: /src/b")
            .replace("folder: /work/app", "folder: /")
            .replace("repo: yes", "repo: no")
            .replace("Thu Dec 03", "Fri Dec 04");
        let a = stable_first(&opencode(OPENCODE), None).expect("reordered");
        let b = stable_first(&opencode(&other), None).expect("reordered");
        assert_eq!(a[0].content, b[0].content);
        assert_ne!(a[1].content, b[1].content);
    }

    #[test]
    fn a_system_prompt_of_one_section_naming_the_project_stays_whole() {
        let system = "You help.\nWorking directory: /work/app";
        assert!(stable_first(&opencode(system), None).is_none());
    }

    #[test]
    fn lines_that_vary_are_found_by_content() {
        for line in [
            "  Workspace root folder: /",
            "  Is directory a git repo: no",
            " - Is a git repository: true",
            "  Today's date: Thu Dec 03 2026",
            "Today's date is 2026-12-03.",
            " - Additional working directories: C:\\src\\b",
        ] {
            assert!(varies_between_sessions(line), "{line:?}");
        }
        for line in [
            " - Platform: linux",
            " - Shell: bash",
            "Note: paths like /tmp are scratch space.",
            "You are powered by the model Qwen2.5-Coder-0.5B-Instruct.",
        ] {
            assert!(!varies_between_sessions(line), "{line:?}");
        }
    }

    #[test]
    fn the_working_directory_is_a_labelled_absolute_path() {
        assert_eq!(
            working_directory("<env>\n  Working directory: /work/app\n</env>"),
            Some(vec!["/work/app".to_owned(), "-work-app".to_owned()])
        );
        // Prose that mentions a working directory, or a relative one, names none.
        assert!(working_directory("Commands run in the working directory: see below.").is_none());
        assert!(working_directory("Working directory: app").is_none());
        assert!(working_directory("Working directory: /").is_none());
    }
}
