//! `thinsnap container create ID --image TOP` and `container rm ID`:
//! Docker's `<id>-init` + `<id>` pair (see `snapshot::container`).

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::GlobalArgs;
use super::store;
use crate::snapshot::{CreateOpts, LayerId, container};

#[derive(Debug, Subcommand)]
pub enum ContainerCommand {
    /// Create a container's init and writable layers on an image.
    Create(CreateArgs),
    /// Remove a container's writable and init layers.
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub id: LayerId,
    /// Image name recorded by `import`, or a layer id.
    #[arg(long)]
    pub image: LayerId,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub id: LayerId,
}

pub fn run(
    global: &GlobalArgs,
    cmd: &ContainerCommand,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let driver = store::open(global)?;
    match cmd {
        ContainerCommand::Create(args) => {
            let top = store::resolve_image(&global.root, driver.as_ref(), &args.image)?;
            container::create_container(
                driver.as_ref(),
                &args.id,
                Some(&top),
                &CreateOpts::default(),
            )?;
            println!("{}", args.id);
        }
        ContainerCommand::Rm(args) => container::remove_container(driver.as_ref(), &args.id)?,
    }
    Ok(ExitCode::SUCCESS)
}
