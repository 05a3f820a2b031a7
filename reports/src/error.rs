//! The one error type of the reports layer.
//!
//! Summarising a run cannot fail (bad numbers become nulls and notes); only preparing and writing
//! the results directory can, and every variant names the file or directory at fault so the user
//! knows where to look.

use std::path::PathBuf;

/// Why the results directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Creating a directory or writing a file failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Writing a CSV file failed.
    #[error("cannot write CSV file {}: {source}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The underlying CSV error.
        source: csv::Error,
    },
    /// Serialising `summary.json` failed.
    #[error("cannot write JSON file {}: {source}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The underlying serde error.
        source: serde_json::Error,
    },
    /// Encoding an HdrHistogram interval log failed.
    #[error("cannot write histogram log {}: {message}", path.display())]
    Histogram {
        /// The `.hlog` file.
        path: PathBuf,
        /// What the histogram serialiser reported.
        message: String,
    },
    /// The results directory is not empty and holds no previous tenantbench result, so
    /// writing into it could mix a run's files with someone else's.
    #[error(
        "refusing to write results into {}: it is not empty (it holds {}) and holds no previous \
         tenantbench result (no summary.json or run.json); give an empty or new directory",
        path.display(),
        example.display()
    )]
    NotAResultsDir {
        /// The directory.
        path: PathBuf,
        /// One entry that tenantbench did not write.
        example: PathBuf,
    },
    /// Drawing a plot failed.
    #[error("cannot draw plot {}: {message}", path.display())]
    Plot {
        /// The SVG file the plot was meant for.
        path: PathBuf,
        /// What plotters reported.
        message: String,
    },
}

impl ReportError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
