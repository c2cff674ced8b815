//! Prompt assembly for reuse: what every session of a user sends alike comes first, what
//! one project or one day sends comes after it, so a new session finds all of the former
//! in the prefix cache.
//!
//! Claude Code's first request is a system prompt (~7k characters), its tools (~32k) and
//! a first user turn. Two places hold what differs between sessions:
//! - the system prompt's `# Memory` section names the project's memory folder
//!   (`~/.claude/projects/-path-of-the-project/memory/`), halfway through the prompt and
//!   so in front of the tools, which the templates write after it;
//! - the environment turn (a `system` turn after the user's, which rendering moves to the
//!   head of the first user turn) names the working directory, whether it is a git
//!   repository and today's date, among ~9k characters that are the same everywhere.
//!
//! Rendered as sent, a session in another project shares ~900 tokens with the sessions
//! before it. So the system prompt's sections that name the project move into the
//! environment turn, and there, after its lines that are the same everywhere, come
//! the moved sections and then the lines that name the project or the date. The model
//! still reads every word; only where it reads a few of them changes. Conversations
//! without such an environment turn are left as they are.

use crate::request::{Message, Role};

/// The environment turn's line that names the working directory.
const WORKING_DIRECTORY: &str = "Primary working directory:";

/// Lines of the environment turn that differ between projects or days even when they do
/// not name the working directory.
const VOLATILE_LINES: &[&str] = &["Is a git repository:", "Today's date is"];

/// The conversation with the parts that name the project or the day moved after those
/// that do not; `None` when it has no environment turn to reorder. A `preamble_mark`
/// (a cache breakpoint's, see [`super::breakpoints`]) goes where the parts that are the
/// same for every session end.
pub(crate) fn stable_first(
    messages: &[Message],
    preamble_mark: Option<&str>,
) -> Option<Vec<Message>> {
    let (env_at, project) = messages
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, m)| m.role == Role::System)
        .find_map(|(i, m)| working_directory(&m.content).map(|dir| (i, dir)))?;
    let names_project = |text: &str| project.iter().any(|p| text.contains(p.as_str()));

    let mut out = messages.to_vec();
    let mut moved = Vec::new();
    if out[0].role == Role::System {
        let (kept, volatile) = split_sections(&out[0].content, &names_project);
        if !volatile.is_empty() {
            out[0].content = kept;
            moved.push(volatile);
        }
    }
    let env = &out[env_at].content;
    let (mut stable, mut volatile) = (Vec::new(), Vec::new());
    for line in env.split('\n') {
        let trimmed = line.trim_start_matches([' ', '-']);
        if names_project(line) || VOLATILE_LINES.iter().any(|v| trimmed.starts_with(v)) {
            volatile.push(line);
        } else {
            stable.push(line);
        }
    }
    let mut reordered = stable.join("\n").trim_end().to_owned();
    let volatile = volatile.join("\n");
    let mut mark = preamble_mark;
    for part in moved
        .iter()
        .chain([&volatile])
        .map(|p| p.trim_matches('\n'))
    {
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

/// The working directory an environment turn names, as written and as Claude Code
/// encodes it in folder names (every character but letters and digits a `-`).
fn working_directory(text: &str) -> Option<Vec<String>> {
    let dir = text.lines().find_map(|line| {
        let (_, dir) = line.split_once(WORKING_DIRECTORY)?;
        Some(dir.trim())
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
/// does not flag, as they were, and those it flags, joined in order.
fn split_sections(text: &str, volatile: &impl Fn(&str) -> bool) -> (String, String) {
    let mut starts: Vec<usize> = text.match_indices("\n# ").map(|(at, _)| at + 1).collect();
    starts.insert(0, 0);
    starts.push(text.len());
    let (mut kept, mut moved) = (String::new(), String::new());
    for bounds in starts.windows(2) {
        let section = &text[bounds[0]..bounds[1]];
        if volatile(section) {
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
}
