//! Fetching the default model and corpus as jobs: [`crate::assets`]'s progress becomes the job's
//! (phases, then bytes), its checkpoint is taken between chunks, and its cancel flag stops the
//! registry client. The app and `hubel fetch` both run these.

use std::path::{Path, PathBuf};

use super::{JobCtx, JobError};
use crate::assets::{self, Clients, FetchError, Progress};

/// A fetch's progress callback, reporting into the job.
fn reporter(ctx: &JobCtx) -> impl FnMut(Progress) + '_ {
    move |p: Progress| {
        ctx.set_phase(&p.phase);
        match p.bytes {
            Some((done, total)) => {
                ctx.set_total(total, "bytes");
                ctx.set_done(done);
            }
            None => ctx.clear_total(),
        }
        // Holds here while paused (a registry client already running is not paused); a cancel
        // is seen by the fetch through the flag.
        let _ = ctx.checkpoint();
    }
}

fn job_error(e: FetchError) -> JobError {
    match e {
        FetchError::Cancelled => JobError::Cancelled,
        e => JobError::Failed(e.to_string()),
    }
}

/// [`assets::fetch_model`] as a job: the model's path, once verified.
pub fn fetch_model(ctx: &JobCtx, dir: &Path, clients: &Clients) -> Result<PathBuf, JobError> {
    assets::fetch_model(dir, clients, &mut reporter(ctx), ctx.cancel_flag()).map_err(job_error)
}

/// [`assets::fetch_corpus`] as a job: the corpus folder.
pub fn fetch_corpus(ctx: &JobCtx, dir: &Path, clients: &Clients) -> Result<PathBuf, JobError> {
    assets::fetch_corpus(dir, clients, &mut reporter(ctx), ctx.cancel_flag()).map_err(job_error)
}
