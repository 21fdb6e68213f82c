//! `tapevault completions SHELL` and `tapevault man`: generated from the clap definition,
//! so they never drift from the commands that exist.

use std::path::PathBuf;

use clap::{Args, CommandFactory};

use super::{Cli, Ctx};
use crate::error::{Context, Result};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write one page per command (tapevault.1, tapevault-backup.1,
    /// tapevault-library-erase.1, ...) into this directory instead of printing
    /// tapevault(1) on stdout.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// Print the completion script for `shell` on stdout.
pub fn completions(a: CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "tapevault", &mut std::io::stdout());
    Ok(())
}

/// Print tapevault(1) in roff, or write every command's page into a directory.
pub fn man(ctx: &Ctx, a: ManArgs) -> Result<()> {
    let cmd = Cli::command();
    match a.out_dir {
        None => {
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .context("writing the man page")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
            let mut pages: Vec<String> = std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("tapevault") && n.ends_with(".1"))
                .collect();
            pages.sort();
            ctx.out.emit(
                &serde_json::json!({"dir": dir, "pages": pages}),
                || {
                    format!(
                        "wrote {} man pages into {} (install: cp {}/*.1 /usr/local/share/man/man1/)",
                        pages.len(),
                        dir.display(),
                        dir.display()
                    )
                },
            );
        }
    }
    Ok(())
}
