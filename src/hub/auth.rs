//! Who may connect and what each connection may do: [`Users`] with argon2 password hashes, and
//! per-code [`Permissions`] resolved once, at start, into two [`CodeSet`]s (the hot-path check is
//! one bit test).
//!
//! With no `[[users]]` in the configuration the hub is open: every connection is anonymous with
//! every permission. With users, a connection must authenticate (`AUTH <user> <password>` on the
//! control channel) unless an `[anonymous]` table grants anonymous connections their own
//! permissions. Password checks are deliberately slow (argon2: tens of milliseconds and 19 MiB
//! each at the default costs), so they run on a few threads of their own, one per core, started at
//! the first check ([`Users::verify`]) — never on a session's arbiter. Each thread hashes into
//! one working memory of its own, allocated once and reused, sized for the largest memory cost
//! among the configured hashes: argon2's own verification allocates and frees 19 MiB per check,
//! which malloc's per-thread arenas kept (320 MB after 20 wrong passwords). At most
//! [`WAITING_PER_THREAD`] checks per thread wait; past that an `AUTH` is refused at once
//! ([`AuthBusy`]). A check whose connection has given up (closed, or out of time) is skipped. An
//! unknown user costs the same check as a wrong password, so timing does not tell which names
//! exist.

use std::collections::HashMap;
use std::fmt;
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use password_hash::rand_core::OsRng;
use tokio::sync::oneshot;

use crate::frame::Status;
use crate::hub::config::{ConfigError, HubConfig};
use crate::hub::control::{CodeSet, GroupName};

/// The queue groups a connection may join: any (no `groups` list), or those a list of names
/// and `prefix*` patterns matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GroupPatterns(Option<Arc<[GroupPattern]>>);

/// One entry of a `groups` list.
#[derive(Clone, Debug, PartialEq, Eq)]
enum GroupPattern {
    /// This name.
    Exact(GroupName),
    /// Names starting with this (`"scan-*"`; `"*"` is every name).
    Prefix(String),
}

impl GroupPatterns {
    /// The patterns of a `groups` list; `None` allows any group.
    ///
    /// # Errors
    /// The first entry that is neither a group name nor a name's prefix followed by `*`.
    fn parse(list: Option<&[String]>) -> Result<GroupPatterns, String> {
        let Some(list) = list else {
            return Ok(GroupPatterns(None));
        };
        let patterns = list
            .iter()
            .map(|entry| match entry.strip_suffix('*') {
                Some("") => Ok(GroupPattern::Prefix(String::new())),
                Some(prefix) => prefix
                    .parse::<GroupName>()
                    .map(|_| GroupPattern::Prefix(prefix.to_owned())),
                None => entry.parse().map(GroupPattern::Exact),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| format!("groups = {list:?}: {error}"))?;
        Ok(GroupPatterns(Some(patterns.into())))
    }

    /// Whether `name` may be joined.
    pub(crate) fn allows(&self, name: &GroupName) -> bool {
        self.0.as_ref().map_or(true, |patterns| {
            patterns.iter().any(|pattern| match pattern {
                GroupPattern::Exact(exact) => exact == name,
                GroupPattern::Prefix(prefix) => name.as_str().starts_with(prefix.as_str()),
            })
        })
    }
}

/// What a connection may do: the codes it may publish on and subscribe to, and the groups it
/// may join.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Permissions {
    /// Codes it may publish on.
    pub publish: CodeSet,
    /// Codes it may subscribe to.
    pub subscribe: CodeSet,
    /// Queue groups it may join (on codes it may subscribe to).
    pub groups: GroupPatterns,
}

impl Permissions {
    /// Every relayable code, both ways, and every group: an open hub's connections.
    pub const fn all() -> Permissions {
        Permissions {
            publish: CodeSet::relayable(),
            subscribe: CodeSet::relayable(),
            groups: GroupPatterns(None),
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
            groups: GroupPatterns::default(),
        })
    }
}

/// Checks that may wait for a checking thread, per thread: a flood of `AUTH`s beyond them is
/// refused at once instead of queueing past the auth timeout.
pub const WAITING_PER_THREAD: usize = 64;

/// The largest argon2 memory cost a configured hash may carry, in KiB (256 MiB): each checking
/// thread keeps that much for the hub's life.
pub const MAX_MEMORY_COST_KIB: u32 = 256 * 1024;

/// A user's PHC hash, decoded once at start: everything a check needs but the memory.
struct StoredHash {
    argon2: Argon2<'static>,
    salt: Vec<u8>,
    expected: Output,
}

impl StoredHash {
    /// Decodes a PHC string as argon2 would to verify it.
    fn parse(phc: &str) -> Result<StoredHash, String> {
        let hash = PasswordHash::new(phc).map_err(|_| {
            "password is not a password hash: store the output of `tej-hub passwd`, never a \
             clear password"
                .to_owned()
        })?;
        let algorithm = Algorithm::try_from(hash.algorithm)
            .map_err(|_| format!("password hash uses {}, not argon2", hash.algorithm))?;
        let version = hash
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(|error| format!("argon2 version: {error}"))?
            .unwrap_or_default();
        let params =
            Params::try_from(&hash).map_err(|error| format!("argon2 parameters: {error}"))?;
        if params.m_cost() > MAX_MEMORY_COST_KIB {
            return Err(format!(
                "argon2 memory cost m={} KiB is above the hub's limit of {MAX_MEMORY_COST_KIB} KiB \
                 (each checking thread keeps that much)",
                params.m_cost()
            ));
        }
        let mut salt = [0u8; 64];
        let salt = hash
            .salt
            .ok_or("the hash has no salt")?
            .decode_b64(&mut salt)
            .map_err(|error| format!("salt: {error}"))?
            .to_vec();
        let expected = hash.hash.ok_or("the hash has no output")?;
        Ok(StoredHash {
            argon2: Argon2::new(algorithm, version, params),
            salt,
            expected,
        })
    }

    /// The working memory a check needs, in blocks of 1 KiB.
    fn blocks(&self) -> usize {
        self.argon2.params().block_count()
    }

    /// Whether `password` hashes to the stored output, hashing in `memory` (grown if short).
    fn matches(&self, password: &str, memory: &mut Vec<Block>) -> bool {
        if memory.len() < self.blocks() {
            memory.resize(self.blocks(), Block::default());
        }
        let mut out = [0u8; Output::MAX_LENGTH];
        let out = &mut out[..self.expected.len()];
        self.argon2
            .hash_password_into_with_memory(password.as_bytes(), &self.salt, out, &mut memory[..])
            .is_ok()
            // `Output`'s comparison takes the same time wherever the outputs differ.
            && Output::new(out).is_ok_and(|computed| computed == self.expected)
    }
}

/// A configured user.
struct User {
    hash: StoredHash,
    permissions: Permissions,
}

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(password_hash::Error);

/// Too many password checks wait already: the `AUTH` is refused without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("auth busy")]
pub(crate) struct AuthBusy;

/// A connection that proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Authenticated {
    /// The user's name.
    pub user: String,
    /// What the user may do.
    pub permissions: Permissions,
}

/// The users by name, shared with the checking threads.
struct Directory {
    users: HashMap<String, User>,
    /// The working memory of the costliest hash, in blocks: each checking thread's.
    blocks: usize,
}

/// One password check for the checking threads.
struct Check {
    user: String,
    password: String,
    answer: oneshot::Sender<Option<Authenticated>>,
}

/// The configured users and the anonymous permissions; see the module documentation.
pub(crate) struct Users {
    users: Arc<Directory>,
    anonymous: Option<Permissions>,
    /// Where checks go; the threads start with the first one and end when this is dropped.
    checks: OnceLock<mpsc::SyncSender<Check>>,
}

/// Names only: hashes are never shown.
impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("names", &self.users.users.keys().collect::<Vec<_>>())
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

impl Users {
    /// The users of `config`, or `None` for an open hub (no `[[users]]`).
    ///
    /// # Errors
    /// [`ConfigError::User`] naming the user whose password is not an argon2 PHC hash (a clear
    /// password, say) or one whose memory cost is above [`MAX_MEMORY_COST_KIB`], whose code list
    /// is bad, or whose name is empty or given twice;
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
            let hash = StoredHash::parse(&user.password).map_err(invalid)?;
            let permissions = Permissions {
                groups: GroupPatterns::parse(user.groups.as_deref()).map_err(invalid)?,
                ..Permissions::from_lists(&user.publish, &user.subscribe).map_err(invalid)?
            };
            let entry = User { hash, permissions };
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
        let blocks = users.values().map(|user| user.hash.blocks()).max();
        Ok(Some(Arc::new(Users {
            users: Arc::new(Directory {
                users,
                blocks: blocks.unwrap_or(0),
            }),
            anonymous,
            checks: OnceLock::new(),
        })))
    }

    /// What an unauthenticated connection may do: `None` when it must authenticate first.
    pub fn anonymous(&self) -> Option<Permissions> {
        self.anonymous.clone()
    }

    /// Checks `password` for `user` on the checking threads; `Ok(None)` for a wrong password or
    /// an unknown user (which costs the same check).
    ///
    /// # Errors
    /// [`AuthBusy`] when [`WAITING_PER_THREAD`] checks per thread wait already.
    pub async fn verify(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<Authenticated>, AuthBusy> {
        let (answer, answered) = oneshot::channel();
        let check = Check {
            user: user.to_owned(),
            password: password.to_owned(),
            answer,
        };
        let queued = self
            .checks
            .get_or_init(|| start_checkers(&self.users))
            .try_send(check);
        match queued {
            Ok(()) => Ok(answered.await.ok().flatten()),
            Err(mpsc::TrySendError::Full(_)) => Err(AuthBusy),
            // No checking thread could start: nobody can be let in.
            Err(mpsc::TrySendError::Disconnected(_)) => Ok(None),
        }
    }

    /// The permissions of `user` now, for a session authenticated by other means (a client
    /// certificate).
    pub fn permissions(&self, user: &str) -> Option<Permissions> {
        self.users
            .users
            .get(user)
            .map(|entry| entry.permissions.clone())
    }
}

/// Starts one checking thread per core, each with its own working memory; they end when the
/// returned sender is dropped.
fn start_checkers(users: &Arc<Directory>) -> mpsc::SyncSender<Check> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (send, receive) = mpsc::sync_channel::<Check>(threads * WAITING_PER_THREAD);
    let receive = Arc::new(Mutex::new(receive));
    for n in 0..threads {
        let (users, receive) = (users.clone(), receive.clone());
        let started = std::thread::Builder::new()
            .name(format!("tej-hub-auth-{n}"))
            .spawn(move || {
                // Allocated once, reused by every check on this thread.
                let mut memory = vec![Block::default(); users.blocks];
                loop {
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
                    let verdict = verify_password(&users, &check, &mut memory);
                    let _ = check.answer.send(verdict);
                }
            });
        if let Err(error) = started {
            tracing::error!(%error, "cannot start a password checking thread");
        }
    }
    send
}

/// The check itself (slow on purpose), hashing in the thread's `memory`.
fn verify_password(
    users: &Directory,
    check: &Check,
    memory: &mut Vec<Block>,
) -> Option<Authenticated> {
    let known = users.users.get(&check.user);
    // An unknown user is checked against any user's hash: the same work as a real check, and
    // the answer is no all the same.
    let hash = match known {
        Some(entry) => &entry.hash,
        None => &users.users.values().next()?.hash,
    };
    let matches = hash.matches(&check.password, memory);
    let entry = known.filter(|_| matches)?;
    Some(Authenticated {
        user: check.user.clone(),
        permissions: entry.permissions.clone(),
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
pub(crate) enum AuthRefused {
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
    replied: Option<Box<[Option<tokio::time::Instant>; Status::COUNT]>>,
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
            Standing::Anonymous(permissions) => Some(permissions.clone()),
            Standing::User(user) => Some(user.permissions.clone()),
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

    /// Whether the connection may join group `name`.
    pub(crate) fn may_join(&self, name: &GroupName) -> bool {
        self.permissions()
            .is_some_and(|permissions| permissions.groups.allows(name))
    }

    /// Counts `frames` denied on `status`; whether to tell the publisher now (at most once per
    /// code per second, so a flood of denied frames cannot flood its own queue).
    pub(crate) fn count_denied(&mut self, status: Status, frames: u64) -> bool {
        self.denied_frames += frames;
        let replied = self
            .replied
            .get_or_insert_with(|| Box::new([None; Status::COUNT]));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::config::UserConfig;
    use argon2::{AssociatedData, ParamsBuilder, PasswordVerifier};

    /// `password` hashed with `algorithm`, `version` and `params`.
    fn phc(password: &str, algorithm: Algorithm, version: Version, params: Params) -> String {
        let salt = SaltString::encode_b64(b"a sixteen b salt").expect("a salt");
        Argon2::new(algorithm, version, params)
            .hash_password(password.as_bytes(), &salt)
            .expect("hash")
            .to_string()
    }

    /// Hashes of `right` with each kind of parameter a PHC string may carry.
    fn hashes() -> Vec<String> {
        let params = |m, t, p, out| Params::new(m, t, p, out).expect("parameters");
        let with_data = ParamsBuilder::new()
            .m_cost(16)
            .t_cost(1)
            .p_cost(1)
            .data(AssociatedData::new(b"tej-hub").expect("data"))
            .build()
            .expect("parameters");
        vec![
            phc(
                "right",
                Algorithm::Argon2id,
                Version::V0x13,
                params(8, 1, 1, None),
            ),
            phc(
                "right",
                Algorithm::Argon2id,
                Version::V0x13,
                Params::default(),
            ),
            phc(
                "right",
                Algorithm::Argon2i,
                Version::V0x13,
                params(64, 3, 4, Some(16)),
            ),
            phc(
                "right",
                Algorithm::Argon2d,
                Version::V0x10,
                params(32, 2, 2, Some(64)),
            ),
            phc("right", Algorithm::Argon2id, Version::V0x13, with_data),
        ]
    }

    #[test]
    fn checks_agree_with_argon2_for_every_parameter_set() {
        let mut memory = Vec::new();
        for hash in hashes() {
            let stored = StoredHash::parse(&hash).expect("a valid hash");
            let parsed = PasswordHash::new(&hash).expect("a PHC string");
            for (password, right) in [("right", true), ("wrong", false), ("", false)] {
                assert_eq!(stored.matches(password, &mut memory), right, "{hash}");
                let theirs = Argon2::default().verify_password(password.as_bytes(), &parsed);
                assert_eq!(theirs.is_ok(), right, "{hash}");
            }
        }
        // One memory, grown to the largest cost and reused for the smaller ones.
        assert_eq!(memory.len(), Params::DEFAULT_M_COST as usize);
    }

    #[test]
    fn each_thread_gets_the_memory_of_the_costliest_hash() {
        let user = |name: &str, m_cost| UserConfig {
            name: name.into(),
            password: phc(
                "x",
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(m_cost, 1, 1, None).expect("parameters"),
            ),
            publish: None,
            subscribe: None,
            groups: None,
        };
        let config = HubConfig {
            users: vec![user("a", 64), user("b", 1024), user("c", 8)],
            ..HubConfig::default()
        };
        let users = Users::from_config(&config)
            .expect("valid users")
            .expect("users");
        assert_eq!(users.users.blocks, 1024);
    }

    #[test]
    fn hashes_beyond_the_memory_limit_or_without_salt_are_refused() {
        let huge = phc(
            "x",
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8, 1, 1, None).expect("parameters"),
        )
        .replace("m=8,", &format!("m={},", MAX_MEMORY_COST_KIB + 1));
        let error = StoredHash::parse(&huge).err().expect("refused");
        assert!(
            error.contains("above the hub's limit of 262144 KiB"),
            "{error}"
        );
        let at_limit = huge.replace(
            &format!("m={},", MAX_MEMORY_COST_KIB + 1),
            &format!("m={MAX_MEMORY_COST_KIB},"),
        );
        assert!(StoredHash::parse(&at_limit).is_ok());
        let no_output = "$argon2id$v=19$m=8,t=1,p=1$YSBzaXh0ZWVuIGIgc2FsdA";
        assert_eq!(
            StoredHash::parse(no_output).err(),
            Some("the hash has no output".to_owned())
        );
        let scrypt = "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E";
        let error = StoredHash::parse(scrypt).err().expect("refused");
        assert!(error.contains("uses scrypt, not argon2"), "{error}");
    }
}
