//! The Jobs list: a bottom panel, shown while any job is listed, one row per job with its
//! progress bar, counts, rate and ETA, Pause/Resume and Cancel; finished jobs show how they
//! ended until cleared.

use super::super::{colors, Command};
use super::ViewCtx;
use crate::jobs::{Hold, JobState, JobStatus};

/// Rows shown before the list scrolls, so the panel never takes much of a small window.
const VISIBLE_ROWS: f32 = 3.0;
const ROW_HEIGHT: f32 = 24.0;

pub fn jobs_panel_ui(ui: &mut egui::Ui, cx: &ViewCtx, out: &mut Vec<Command>) {
    let jobs = &cx.runtime.job_list;
    if jobs.is_empty() {
        return;
    }
    let active = jobs.iter().filter(|j| !j.state.is_finished()).count();
    let finished = jobs.len() - active;
    egui::Panel::bottom("jobs").show(ui, |ui| {
        let title = match active {
            0 => "Jobs".to_string(),
            n => format!("Jobs · {n} running"),
        };
        egui::CollapsingHeader::new(title)
            .id_salt("jobs list")
            .default_open(true)
            .show_unindented(ui, |ui| {
                egui::ScrollArea::vertical()
                    .max_height(VISIBLE_ROWS * ROW_HEIGHT)
                    .auto_shrink([false, true])
                    .show(ui, |ui| {
                        for job in jobs {
                            job_row_ui(ui, job, out);
                        }
                    });
                if finished > 0 && ui.small_button("Clear finished").clicked() {
                    out.push(Command::ClearJobs(None));
                }
            });
    });
}

fn job_row_ui(ui: &mut egui::Ui, job: &JobStatus, out: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        ui.set_min_height(ROW_HEIGHT);
        ui.label(egui::RichText::new(&job.name).strong())
            .on_hover_text(format!("{} (job {})", job.line(), job.id));
        match &job.state {
            JobState::Done(summary) => {
                let text = if summary.is_empty() {
                    format!("Done in {}", crate::jobs::clock(job.elapsed))
                } else {
                    format!("Done in {}: {summary}", crate::jobs::clock(job.elapsed))
                };
                ui.label(text);
            }
            JobState::Failed(message) => {
                ui.colored_label(colors::ERROR, format!("Failed: {message}"));
            }
            JobState::Cancelled => {
                ui.label("Cancelled");
            }
            JobState::Queued | JobState::Running | JobState::Paused => {
                let bar = egui::ProgressBar::new(job.fraction().unwrap_or(0.0))
                    .desired_width(200.0)
                    .desired_height(14.0);
                let bar = match job.fraction() {
                    Some(f) => bar.text(format!("{:.0}%", f * 100.0)),
                    // Unknown length: an animated bar (it repaints itself), unless held.
                    None => bar.animate(job.state == JobState::Running && job.held.is_none()),
                };
                ui.add(bar);
                if !job.phase.is_empty() {
                    ui.label(&job.phase);
                }
                ui.label(egui::RichText::new(job.counts()).monospace());
                for text in [job.rate_text(), job.eta_text()] {
                    if !text.is_empty() {
                        ui.label(egui::RichText::new(text).weak());
                    }
                }
                match (&job.state, job.held) {
                    (JobState::Queued, _) => {
                        ui.label(egui::RichText::new("queued").weak());
                    }
                    (JobState::Paused, _) => {
                        ui.label(egui::RichText::new("paused").weak());
                    }
                    (_, Some(Hold::Interactive)) => {
                        ui.label(egui::RichText::new("waiting for the viewer").weak());
                    }
                    _ => {}
                }
            }
        }
        if job.state.is_finished() {
            if ui.small_button("Clear").clicked() {
                out.push(Command::ClearJobs(Some(job.id)));
            }
        } else {
            if job.state == JobState::Paused {
                if ui.small_button("Resume").clicked() {
                    out.push(Command::ResumeJob(job.id));
                }
            } else if ui.small_button("Pause").clicked() {
                out.push(Command::PauseJob(job.id));
            }
            if ui.small_button("Cancel").clicked() {
                out.push(Command::CancelJob(job.id));
            }
        }
    });
}
