//! `events dlq`: list, show, replay and purge a stream's dead letters.

use crate::say;
use std::io::{BufRead, IsTerminal, Write};

use events::Connection;
use events::{DeadLetterEntry, DeadLetters, dead_letter_stream};

use crate::{DlqCommand, Failure};

/// Runs one `dlq` command.
pub(crate) async fn run(connection: Connection, command: DlqCommand) -> Result<(), Failure> {
    let letters =
        |stream: &str| DeadLetters::new(connection.clone(), stream, dead_letter_stream(stream));
    match command {
        DlqCommand::List {
            stream,
            count,
            after,
        } => {
            let page = letters(&stream).list(&after, count).await?;
            for letter in &page {
                say!(
                    "{}  {}  attempts {}  {}",
                    letter.id,
                    letter.event_type().unwrap_or_else(|| "(no type)".into()),
                    letter.attempts,
                    letter.reason
                );
            }
            match page.last() {
                Some(last) if page.len() == count => say!("next page: --after {}", last.id),
                None => say!("no dead letters"),
                Some(_) => {}
            }
        }
        DlqCommand::Show { stream, id } => {
            let letter = letters(&stream)
                .get(&id)
                .await?
                .ok_or_else(|| format!("no dead letter {id} in {}", dead_letter_stream(&stream)))?;
            show(&letter);
        }
        DlqCommand::Replay { stream, selection } => {
            let mut letters = letters(&stream);
            let chosen = selection.select(&mut letters).await?;
            let total = chosen.len();
            let mut replayed = 0;
            for (done, letter) in chosen.iter().enumerate() {
                if letters.replay(letter).await?.is_some() {
                    replayed += 1;
                }
                if total >= 100 && (done + 1) % 100 == 0 {
                    eprintln!("replayed {}/{total}", done + 1);
                }
            }
            say!("replayed {replayed} dead letter(s) to {stream}");
        }
        DlqCommand::Purge {
            stream,
            selection,
            yes,
        } => {
            let mut letters = letters(&stream);
            let chosen = selection.select(&mut letters).await?;
            if chosen.is_empty() {
                say!("no dead letters match");
                return Ok(());
            }
            if !yes
                && !confirm(&format!(
                    "purge {} dead letter(s) of {stream}?",
                    chosen.len()
                ))?
            {
                return Err("nothing purged".into());
            }
            let ids: Vec<String> = chosen.into_iter().map(|letter| letter.id).collect();
            let purged = letters.purge(&ids).await?;
            say!("purged {purged} dead letter(s) of {stream}");
        }
    }
    Ok(())
}

/// Asks `question` on the terminal; without one, refuses rather than guess.
fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(format!("{question} refusing without a terminal to ask on: pass --yes").into());
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn show(letter: &DeadLetterEntry) {
    say!("id            {}", letter.id);
    say!("reason        {}", letter.reason);
    say!("attempts      {}", letter.attempts);
    say!(
        "group         {}  consumer {}",
        letter.group,
        letter.consumer
    );
    say!(
        "entry         {}  dead-lettered at {}",
        letter.entry_id,
        letter.time
    );
    for (name, value) in &letter.fields {
        say!(
            "  {:<12} {}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value)
        );
    }
}
