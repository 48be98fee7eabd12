//! Who may connect and what each connection may do: [`Users`] with argon2 password hashes, and
//! per-code [`Permissions`] resolved once, at start, into two [`CodeSet`]s (the hot-path check is
//! one bit test).
//!
//! With no `[[users]]` in the configuration the hub is open: every connection is anonymous with
//! every permission. With users, a connection must authenticate (`AUTH <user> <password>` on the
//! control channel) unless an `[anonymous]` table grants anonymous connections their own
//! permissions. Password checks are deliberately slow (argon2: tens of milliseconds and 19 MiB
//! each at the default costs), so they run on a few threads of their own, one per core, started at
//! the first check ([`Users::verify`]) — never on a session's arbiter, and with a fixed number of
//! threads so that a flood of failed `AUTH`s cannot grow the hub's memory. A check whose
//! connection has given up (closed, or out of time) is skipped. An unknown user costs the same check
//! as a wrong password, so timing does not tell which names exist.

use std::collections::HashMap;
use std::fmt;
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use password_hash::rand_core::OsRng;
use tokio::sync::oneshot;

use crate::hub::config::{ConfigError, HubConfig};
use crate::hub::control::CodeSet;

/// What a connection may do: the codes it may publish on and subscribe to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Codes it may publish on.
    pub publish: CodeSet,
    /// Codes it may subscribe to.
    pub subscribe: CodeSet,
}

impl Permissions {
    /// Every relayable code, both ways: an open hub's connections.
    pub const fn all() -> Permissions {
        Permissions {
            publish: CodeSet::relayable(),
            subscribe: CodeSet::relayable(),
        }
    }

    /// Resolves `publish`/`subscribe` lists (absent lists are empty).
    fn from_lists(
        publish: &Option<String>,
        subscribe: &Option<String>,
    ) -> Result<Permissions, String> {
        let parse = |list: &Option<String>, what: &str| match list {
            None => Ok(CodeSet::empty()),
            Some(list) => list
                .parse::<CodeSet>()
                .map_err(|error| format!("{what} = {list:?}: {error}")),
        };
        Ok(Permissions {
            publish: parse(publish, "publish")?,
            subscribe: parse(subscribe, "subscribe")?,
        })
    }
}

/// A configured user.
struct User {
    /// The PHC string, already checked to parse.
    hash: String,
    permissions: Permissions,
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(password_hash::Error);

/// A connection that proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The user's name.
    pub user: String,
    /// What the user may do.
    pub permissions: Permissions,
}

/// The users by name, shared with the checking threads.
type Directory = HashMap<String, User>;

/// One password check for the checking threads.
struct Check {
    user: String,
    password: String,
    answer: oneshot::Sender<Option<Authenticated>>,
}

/// The configured users and the anonymous permissions; see the module documentation.
pub struct Users {
    users: Arc<Directory>,
    anonymous: Option<Permissions>,
    /// Where checks go; the threads start with the first one and end when this is dropped.
    checks: OnceLock<mpsc::Sender<Check>>,
}

/// Names only: hashes are never shown.
impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("names", &self.users.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl Users {
    /// The users of `config`, or `None` for an open hub (no `[[users]]`).
    ///
    /// # Errors
    /// [`ConfigError::User`] naming the user whose password is not an argon2 PHC hash (a clear
    /// password, say), whose code list is bad, or whose name is empty or given twice;
    /// [`ConfigError::Anonymous`] for a bad `[anonymous]` list, or an `[anonymous]` table without
    /// users.
    pub fn from_config(config: &HubConfig) -> Result<Option<Arc<Users>>, ConfigError> {
        if config.users.is_empty() {
            return match &config.anonymous {
                Some(_) => Err(ConfigError::Anonymous(
                    "an [anonymous] table needs [[users]]: without users everyone has every permission"
                        .into(),
                )),
                None => Ok(None),
            };
        }
        let mut users = HashMap::new();
        for user in &config.users {
            let invalid = |problem: String| ConfigError::User {
                name: user.name.clone(),
                problem,
            };
            if user.name.is_empty() || user.name.contains(|c: char| c.is_ascii_whitespace()) {
                return Err(invalid("a name must be non-empty, without spaces".into()));
            }
            let hash = PasswordHash::new(&user.password).map_err(|_| {
                invalid(
                    "password is not a password hash: store the output of `tej-hub passwd`, \
                     never a clear password"
                        .into(),
                )
            })?;
            if !hash.algorithm.as_str().starts_with("argon2") {
                return Err(invalid(format!(
                    "password hash uses {}, not argon2",
                    hash.algorithm
                )));
            }
            let permissions =
                Permissions::from_lists(&user.publish, &user.subscribe).map_err(invalid)?;
            let entry = User {
                hash: user.password.clone(),
                permissions,
            };
            if users.insert(user.name.clone(), entry).is_some() {
                return Err(invalid("the name is given twice".into()));
            }
        }
        let anonymous = match &config.anonymous {
            Some(table) => Some(
                Permissions::from_lists(&table.publish, &table.subscribe)
                    .map_err(ConfigError::Anonymous)?,
            ),
            None => None,
        };
        Ok(Some(Arc::new(Users {
            users: Arc::new(users),
            anonymous,
            checks: OnceLock::new(),
        })))
    }

    /// What an unauthenticated connection may do: `None` when it must authenticate first.
    pub fn anonymous(&self) -> Option<Permissions> {
        self.anonymous
    }

    /// Whether `user` exists.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Checks `password` for `user` on the checking threads; `None` for a wrong password or an
    /// unknown user (which costs the same check).
    pub async fn verify(&self, user: &str, password: &str) -> Option<Authenticated> {
        let (answer, answered) = oneshot::channel();
        let check = Check {
            user: user.to_owned(),
            password: password.to_owned(),
            answer,
        };
        self.checks
            .get_or_init(|| start_checkers(&self.users))
            .send(check)
            .ok()?;
        answered.await.ok().flatten()
    }

    /// The permissions of `user` now, for a session authenticated by other means (a client
    /// certificate).
    pub fn permissions(&self, user: &str) -> Option<Permissions> {
        self.users.get(user).map(|entry| entry.permissions)
    }
}

/// Starts one checking thread per core; they end when the returned sender is dropped.
fn start_checkers(users: &Arc<Directory>) -> mpsc::Sender<Check> {
    let (send, receive) = mpsc::channel::<Check>();
    let receive = Arc::new(Mutex::new(receive));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for n in 0..threads {
        let (users, receive) = (users.clone(), receive.clone());
        let started = std::thread::Builder::new()
            .name(format!("tej-hub-auth-{n}"))
            .spawn(move || loop {
                let next = receive
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                let Ok(check) = next else {
                    return;
                };
                // The connection gave up (closed, or out of time): spare the work.
                if check.answer.is_closed() {
                    continue;
                }
                let verdict = verify_password(&users, &check.user, &check.password);
                let _ = check.answer.send(verdict);
            });
        if let Err(error) = started {
            tracing::error!(%error, "cannot start a password checking thread");
        }
    }
    send
}

/// The check itself (slow on purpose).
fn verify_password(users: &Directory, user: &str, password: &str) -> Option<Authenticated> {
    let known = users.get(user);
    // An unknown user is checked against any user's hash: the same work as a real check, and
    // the answer is no all the same.
    let hash = match known {
        Some(entry) => &entry.hash,
        None => &users.values().next()?.hash,
    };
    let parsed = PasswordHash::new(hash).ok()?;
    let matches = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    let entry = known.filter(|_| matches)?;
    Some(Authenticated {
        user: user.to_owned(),
        permissions: entry.permissions,
    })
}

/// The argon2id PHC hash of `password` with a fresh random salt and the crate's default costs
/// (19 MiB, 2 passes, 1 lane: OWASP's recommendation), as `tej-hub passwd` prints it.
///
/// # Errors
/// [`HashError`] if the password cannot be hashed (it is too long for argon2).
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(HashError)
}

/// A reload took away what a connection stood on: its user, or anonymous access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("auth revoked")]
pub(crate) struct Revoked;

/// Why an `AUTH` was refused before any password check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefused {
    /// The hub has no users.
    #[error("auth not enabled: the hub has no users")]
    NotEnabled,
    /// The connection has authenticated already.
    #[error("already authenticated")]
    AlreadyAuthenticated,
}

/// How a connection stands.
#[derive(Clone, Debug)]
enum Standing {
    /// Users are configured and anonymous connections may do nothing: `AUTH` first.
    Pending,
    /// Not authenticated, with the hub's anonymous permissions (every permission on an open hub).
    Anonymous(Permissions),
    /// Authenticated as a user.
    User(Authenticated),
}

/// Least time between two `ERR permission denied: publish <code>` replies for one code.
const DENIAL_REPLY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One connection's access: whether it must authenticate, as whom it did, what it may do, and
/// its denied publications. Owned by the session.
#[derive(Debug)]
pub(crate) struct Access {
    users: Option<Arc<Users>>,
    standing: Standing,
    /// When each code's last denial reply went out; allocated at the first denial.
    replied: Option<Box<[Option<tokio::time::Instant>; 128]>>,
    denied_frames: u64,
}

impl Access {
    /// A new connection's access on a hub with `users` (`None`: an open hub); `certified` when
    /// its client certificate named the user.
    pub(crate) fn new(users: Option<Arc<Users>>, certified: Option<Authenticated>) -> Access {
        let standing = match (&users, certified) {
            (_, Some(user)) => Standing::User(user),
            (None, None) => Standing::Anonymous(Permissions::all()),
            (Some(users), None) => users
                .anonymous()
                .map_or(Standing::Pending, Standing::Anonymous),
        };
        Access {
            users,
            standing,
            replied: None,
            denied_frames: 0,
        }
    }

    /// What the connection may do; `None` until it authenticates, when it must.
    pub(crate) fn permissions(&self) -> Option<Permissions> {
        match &self.standing {
            Standing::Pending => None,
            Standing::Anonymous(permissions) => Some(*permissions),
            Standing::User(user) => Some(user.permissions),
        }
    }

    /// The user it authenticated as.
    pub(crate) fn user(&self) -> Option<&str> {
        match &self.standing {
            Standing::User(user) => Some(&user.user),
            Standing::Pending | Standing::Anonymous(_) => None,
        }
    }

    /// The users to check an `AUTH` against.
    ///
    /// # Errors
    /// [`AuthRefused`] on an open hub or after a successful `AUTH`.
    pub(crate) fn users_for_auth(&self) -> Result<Arc<Users>, AuthRefused> {
        match (&self.users, &self.standing) {
            (None, _) => Err(AuthRefused::NotEnabled),
            (Some(_), Standing::User(_)) => Err(AuthRefused::AlreadyAuthenticated),
            (Some(users), _) => Ok(users.clone()),
        }
    }

    /// The connection authenticated as `user`.
    pub(crate) fn grant(&mut self, user: Authenticated) {
        self.standing = Standing::User(user);
    }

    /// The hub reloaded its users: the connection's permissions become what `users` say now.
    /// Returns them (`None` while it still has to authenticate).
    ///
    /// # Errors
    /// [`Revoked`] when its user is gone, or anonymous access it relied on is.
    pub(crate) fn reauthorize(
        &mut self,
        users: Option<Arc<Users>>,
    ) -> Result<Option<Permissions>, Revoked> {
        let standing = match (&self.standing, &users) {
            (_, None) => Standing::Anonymous(Permissions::all()),
            (Standing::User(user), Some(users)) => {
                let permissions = users.permissions(&user.user).ok_or(Revoked)?;
                Standing::User(Authenticated {
                    user: user.user.clone(),
                    permissions,
                })
            }
            (Standing::Anonymous(_), Some(users)) => {
                Standing::Anonymous(users.anonymous().ok_or(Revoked)?)
            }
            (Standing::Pending, Some(users)) => users
                .anonymous()
                .map_or(Standing::Pending, Standing::Anonymous),
        };
        self.standing = standing;
        self.users = users;
        Ok(self.permissions())
    }

    /// What a `SUB codes` may add: `codes` itself when every code is permitted; for `*` (every
    /// relayable code) the permitted ones. `Err` with the codes that are not permitted.
    pub(crate) fn subscription(&self, codes: CodeSet) -> Result<CodeSet, CodeSet> {
        let allowed = self.permissions().unwrap_or_default().subscribe;
        let wanted = if codes == CodeSet::relayable() {
            codes.intersection(allowed)
        } else {
            codes
        };
        let denied = wanted.difference(allowed);
        if wanted.is_empty() {
            Err(codes)
        } else if denied.is_empty() {
            Ok(wanted)
        } else {
            Err(denied)
        }
    }

    /// Counts `frames` denied on `status`; whether to tell the publisher now (at most once per
    /// code per second, so a flood of denied frames cannot flood its own queue).
    pub(crate) fn count_denied(&mut self, status: crate::frame::Status, frames: u64) -> bool {
        self.denied_frames += frames;
        let replied = self.replied.get_or_insert_with(|| Box::new([None; 128]));
        let last = &mut replied[usize::from(status.code())];
        let now = tokio::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < DENIAL_REPLY_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Frames this connection published where it may not.
    pub(crate) fn denied_frames(&self) -> u64 {
        self.denied_frames
    }
}
