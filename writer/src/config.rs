//! Writer configuration and the conflict vocabulary.

use std::sync::Arc;
use std::time::Duration;

use writebehind_core::{Change, Expected, Key, Value};

use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::schema::TableSpec;

/// A user conflict resolver: sees the conflict, picks the outcome.
pub type Resolver = Arc<dyn Fn(&Conflict) -> Resolution + Send + Sync>;

/// What to do when a put or delete finds a different database version.
#[derive(Clone)]
pub enum ConflictPolicy {
    /// Drop our change; the outcome carries the database row so the cache
    /// can refresh. The default.
    KeepDatabase,
    /// Write our change unconditionally.
    Overwrite,
    /// Ask the resolver, inside the flush transaction (keep it fast and pure).
    Resolve(Resolver),
}

impl std::fmt::Debug for ConflictPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConflictPolicy::KeepDatabase => "KeepDatabase",
            ConflictPolicy::Overwrite => "Overwrite",
            ConflictPolicy::Resolve(_) => "Resolve(..)",
        })
    }
}

/// A resolver's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Keep the database row, drop ours.
    KeepDatabase,
    /// Write this value unconditionally.
    Write(Value),
}

/// What the writer did about a conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConflictResolutionTaken {
    /// Not decided yet: what a [`ConflictPolicy::Resolve`] resolver sees.
    Pending,
    /// The database row was kept.
    KeptDatabase,
    /// Our change was written unconditionally.
    Overwrote,
    /// The resolver's value was written.
    Resolved(Value),
    /// The write chosen for the conflict failed permanently and was dead-lettered.
    DeadLettered,
    /// The [`ConflictPolicy::Resolve`] resolver panicked (its message): the
    /// database row was kept.
    ResolverPanicked(String),
}

impl ConflictResolutionTaken {
    /// The label stored in the conflicts table's `resolution` column.
    pub fn label(&self) -> &'static str {
        match self {
            ConflictResolutionTaken::Pending => "pending",
            ConflictResolutionTaken::KeptDatabase => "kept_database",
            ConflictResolutionTaken::Overwrote => "overwrote",
            ConflictResolutionTaken::Resolved(_) => "resolved",
            ConflictResolutionTaken::DeadLettered => "dead_lettered",
            ConflictResolutionTaken::ResolverPanicked(_) => "resolver_panicked",
        }
    }
}

/// A put or delete whose expected version did not match the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The key.
    pub key: Key,
    /// Our coalesced change.
    pub ours: Change,
    /// The version our change was derived from.
    pub expected: Expected,
    /// The database row (value, version) as found; `None`: no row.
    pub database: Option<(Value, i64)>,
    /// What was done about it.
    pub resolution: ConflictResolutionTaken,
}

/// Configuration for [`Writer::connect`](crate::Writer::connect).
#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub(crate) instance: String,
    pub(crate) table: TableSpec,
    pub(crate) progress_table: Ident,
    pub(crate) conflicts_table: Ident,
    pub(crate) dead_letter_table: Ident,
    pub(crate) policy: ConflictPolicy,
    pub(crate) pool_size: u32,
    pub(crate) max_rows_per_statement: Option<usize>,
    pub(crate) acquire_timeout: Duration,
    pub(crate) busy_timeout: Duration,
    pub(crate) report_values: bool,
    pub(crate) dead_letter_file: Option<std::path::PathBuf>,
}

impl WriterConfig {
    /// A configuration for the cache instance `instance` (its flush progress
    /// row is keyed by this id: one id per WAL directory, stable across restarts).
    pub fn new(instance: impl Into<String>) -> WriterConfig {
        WriterConfig {
            instance: instance.into(),
            table: TableSpec::default(),
            progress_table: Ident::fixed("writebehind_progress"),
            conflicts_table: Ident::fixed("writebehind_conflicts"),
            dead_letter_table: Ident::fixed("writebehind_dead_letters"),
            policy: ConflictPolicy::KeepDatabase,
            pool_size: 4,
            max_rows_per_statement: None,
            acquire_timeout: Duration::from_secs(10),
            busy_timeout: Duration::from_secs(5),
            report_values: true,
            dead_letter_file: None,
        }
    }

    /// A local file for dead letters the dead-letter table itself refuses
    /// (e.g. text PostgreSQL cannot store): one JSON line each, synced
    /// before the flush commits; read it with
    /// [`read_local_dead_letters`](crate::read_local_dead_letters). Without
    /// it such a flush fails. Default: none.
    #[must_use]
    pub fn dead_letter_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.dead_letter_file = Some(path.into());
        self
    }

    /// The data table. Default: [`TableSpec::default`] (`counters`).
    #[must_use]
    pub fn table(mut self, table: TableSpec) -> Self {
        self.table = table;
        self
    }

    /// The prefix of the cache's own bookkeeping tables (progress,
    /// conflicts, dead letters): `{prefix}progress`, `{prefix}conflicts`,
    /// `{prefix}dead_letters`. Default `writebehind_`. They never live in
    /// the user's data table. Fails when a name is not a plain identifier.
    pub fn bookkeeping_prefix(mut self, prefix: &str) -> Result<Self> {
        self.progress_table = Ident::new(&format!("{prefix}progress"))?;
        self.conflicts_table = Ident::new(&format!("{prefix}conflicts"))?;
        self.dead_letter_table = Ident::new(&format!("{prefix}dead_letters"))?;
        Ok(self)
    }

    /// Progress table name. Default `writebehind_progress`.
    #[must_use]
    pub fn progress_table(mut self, name: Ident) -> Self {
        self.progress_table = name;
        self
    }

    /// Conflicts table name. Default `writebehind_conflicts`.
    #[must_use]
    pub fn conflicts_table(mut self, name: Ident) -> Self {
        self.conflicts_table = name;
        self
    }

    /// Dead-letter table name. Default `writebehind_dead_letters`.
    #[must_use]
    pub fn dead_letter_table(mut self, name: Ident) -> Self {
        self.dead_letter_table = name;
        self
    }

    /// Conflict policy. Default [`ConflictPolicy::KeepDatabase`].
    #[must_use]
    pub fn conflict_policy(mut self, policy: ConflictPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Maximum pooled connections. Default 4. In-memory SQLite always uses 1.
    #[must_use]
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// Maximum rows per data statement. Default per backend: 5 000 on
    /// PostgreSQL, 2 000 on MySQL, 5 000 on SQLite; SQLite (32 766) and MySQL
    /// (65 535) statements are further capped by their bind-parameter limit.
    #[must_use]
    pub fn max_rows_per_statement(mut self, n: usize) -> Self {
        self.max_rows_per_statement = Some(n);
        self
    }

    /// How long to wait for a pooled connection. Default 10 s.
    #[must_use]
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }

    /// SQLite only: how long a statement waits on a locked database. Default 5 s.
    #[must_use]
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }

    /// Whether unconditional writes and counter adds read back the row's new
    /// version and value for [`ItemOutcome::Written`](writebehind_core::ItemOutcome)
    /// (RETURNING on PostgreSQL; a re-select in the transaction on MySQL and,
    /// aggregated as one JSON row, on SQLite). Default `true`. With `false`
    /// those outcomes carry `version: None` (and `value: None` for counters):
    /// flushes then cost about what the raw upsert does, but the cache cannot
    /// keep an exact clean copy. Conditional writes (`Expected::Absent` /
    /// `Version`) and conflict resolutions on existing rows still report
    /// their version: the row was locked at a known version.
    #[must_use]
    pub fn report_values(mut self, on: bool) -> Self {
        self.report_values = on;
        self
    }

    /// The instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.instance.is_empty() || self.instance.len() > 255 {
            return Err(Error::Config(format!(
                "instance id must be 1..=255 bytes, got {}",
                self.instance.len()
            )));
        }
        if self.pool_size == 0 {
            return Err(Error::Config("pool_size must be at least 1".into()));
        }
        if self.max_rows_per_statement == Some(0) {
            return Err(Error::Config(
                "max_rows_per_statement must be at least 1".into(),
            ));
        }
        let t = [
            &self.table.table,
            &self.progress_table,
            &self.conflicts_table,
            &self.dead_letter_table,
        ];
        for (i, a) in t.iter().enumerate() {
            if t[i + 1..]
                .iter()
                .any(|b| b.as_str().eq_ignore_ascii_case(a.as_str()))
            {
                return Err(Error::Config(format!("table name {a} is used twice")));
            }
        }
        self.table.validate()
    }
}
