//! Saving: the public bodies of save, delete, change_id and update (one each, whatever the
//! record format), and what the formats share: the compare-and-swap loop, what an update's
//! closure did, and a session that is gone.

use super::SessionStore;
use super::tier::Tier;
use crate::Update;
use crate::session::data::{Session, State};
// `Error` is named by the docs of the public methods.
#[allow(unused_imports)]
use crate::session::error::{Error, Result};
use crate::session::id::SessionId;
use crate::session::record::Map;

/// Optimistic save attempts before a save decides under the lock instead.
pub(super) const CAS_ROUNDS: usize = 8;
/// New ids tried when a generated id is already taken (which a working random number
/// generator never does).
pub(super) const ID_ATTEMPTS: usize = 4;

/// What [`SessionStore::save`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Saved {
    /// Nothing to write.
    Unchanged,
    /// The session was written.
    Written,
    /// The session had been [invalidated](Session::invalidate) and was removed.
    Deleted,
    /// The stored session had been deleted, had expired, or had moved to a new id meanwhile;
    /// it was not recreated, and the session now counts as invalidated.
    Gone,
}

impl SessionStore {
    /// Writes what changed in `session`: nothing if nothing did
    /// ([`Session::is_modified`]); removes it if it was
    /// [invalidated](Session::invalidate).
    ///
    /// Concurrent saves of one session (two requests, in any processes) never produce a torn
    /// record: each save replaces the record as a whole, atomically. For each key it changed,
    /// the last save wins; keys it did not change keep what other saves wrote, and flash
    /// values from other requests are kept. A session deleted, expired or moved to a new id
    /// meanwhile is not brought back ([`Saved::Gone`]). For a read-modify-write of one value
    /// (a counter) use [`update`](Self::update).
    ///
    /// Each write counts as activity: it moves the idle deadline (within the lifetime).
    ///
    /// # Errors
    /// [`Error::Cache`] — [`crate::Error::ValueTooLarge`] if the record is larger than the
    /// cache's `max_value_size` ([`crate::Error::TooLarge`] if the cache has no overflow area
    /// and the record does not fit a page); nothing is written; [`Error::BadRecord`] / [`Error::UnsupportedVersion`] if
    /// the stored record cannot be read (it is left alone).
    pub fn save(&self, session: &mut Session) -> Result<Saved> {
        if session.invalidated {
            if session.state == State::Stored {
                self.delete(&session.id)?;
            }
            session.state = State::New;
            session.persist = false;
            return Ok(Saved::Deleted);
        }
        if !session.is_modified() {
            return Ok(Saved::Unchanged);
        }
        self.inner.mode.save(&self.inner.tier, session)
    }

    /// Removes the session `id`. Returns whether it was live.
    ///
    /// # Errors
    /// [`Error::Cache`].
    pub fn delete(&self, id: &SessionId) -> Result<bool> {
        self.inner.mode.delete(&self.inner.tier, id)
    }

    /// Moves the session to a new id (do this when a user logs in or gains privileges, so
    /// that an id known before — perhaps planted by an attacker — is worthless after): its
    /// values, including unsaved changes, are written under the new id and the old id is
    /// deleted. Returns the old id. For a session not stored yet, only the id changes.
    ///
    /// A request still using the old id afterwards gets a new, empty session. If the stored
    /// session was deleted or expired meanwhile, it is not recreated (the session counts as
    /// invalidated, as after [`Saved::Gone`]).
    ///
    /// The new record is written before the old one is deleted, and the old one only as it
    /// was read: a save to the old id by another request meanwhile is carried over.
    ///
    /// # Errors
    /// As [`save`](Self::save); [`Error::Contended`] if other requests kept saving the session
    /// meanwhile. On an error the session stays whole under its old id, whatever failed.
    pub fn change_id(&self, session: &mut Session) -> Result<SessionId> {
        let old = session.id;
        if session.state == State::New || session.invalidated {
            session.id = self.new_id()?;
            return Ok(old);
        }
        self.inner.mode.change_id(&self.inner.tier, session)
    }

    /// Atomic read-modify-write of the session `id`: `f` gets the stored session under the
    /// cache's page lock — no other thread or process can change the session meanwhile —
    /// and whatever it changes is written before the lock is released. `None` if there is
    /// no live session (an expired one is deleted).
    ///
    /// This is not a request: it does not deliver flash values (they stay pending, and `f`
    /// may add some with [`Session::flash`]), check the binding, or move the idle deadline.
    /// [`Session::invalidate`] in `f` deletes the session.
    ///
    /// `f` runs under the page lock: keep it short, and do not use this store's cache in it
    /// (that is [`crate::Error::Reentrant`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let store = fastmmap::session::SessionStore::builder().path(dir.path().join("s")).build()?;
    /// # let mut s = store.create(&Default::default())?;
    /// # store.save(&mut s)?;
    /// # let id = *s.id();
    /// let hits = store.update(&id, |session| {
    ///     let n = session.get::<u64>("hits").ok().flatten().unwrap_or(0) + 1;
    ///     session.insert("hits", &n).map(|_| n)
    /// })?;
    /// assert_eq!(hits.transpose()?, Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`save`](Self::save); if the result does not fit, nothing is written.
    pub fn update<R>(
        &self,
        id: &SessionId,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<Option<R>> {
        self.inner.mode.update(&self.inner.tier, id, f)
    }
}

/// What an update's closure did to a session loaded under the lock.
pub(super) enum Applied<R> {
    /// It invalidated the session: remove it.
    Invalidated(R),
    /// It changed nothing (flash values included): keep the record.
    Unchanged(R),
    /// It changed the session, which is to be written.
    Changed(R, Box<Session>),
}

/// Runs an update's closure `f` on `session` (its pending flash values `pending_flash` in
/// `flash_out`) and says what to do with the record.
pub(super) fn apply<R>(
    mut session: Session,
    pending_flash: &Map,
    f: impl FnOnce(&mut Session) -> R,
) -> Applied<R> {
    let result = f(&mut session);
    if session.invalidated {
        return Applied::Invalidated(result);
    }
    let changed =
        session.cleared || !session.changes.is_empty() || session.flash_out != *pending_flash;
    if changed {
        Applied::Changed(result, Box::new(session))
    } else {
        Applied::Unchanged(result)
    }
}

/// Replaces the record under `key` with what `decide` makes of it, atomically, with the work
/// of `decide` done outside the lock: up to `rounds` compare-and-swap rounds (read, decide,
/// then write `write(&decision)` only if the record is still what was read), then, if other
/// writers keep winning, one round with `decide` under the lock. Returns the decision that
/// took effect.
pub(super) fn swap<P>(
    tier: &Tier,
    key: &[u8],
    rounds: usize,
    decide: impl Fn(Option<&[u8]>) -> Result<P>,
    write: impl Fn(&P) -> Update,
) -> Result<P> {
    for _ in 0..rounds {
        let current = tier.get(key)?;
        let decision = decide(current.as_deref())?;
        let swapped = tier.update_with(key, |now_bytes| {
            if now_bytes != current.as_deref() {
                return (Update::Keep, false);
            }
            (write(&decision), true)
        })?;
        if swapped {
            return Ok(decision);
        }
    }
    tier.try_update(key, |current| {
        let decision = decide(current)?;
        Ok((write(&decision), decision))
    })
}

/// What [`move_record`] did.
pub(super) enum Moved<T> {
    /// The record is under the new id, made by `decide` (with this `T`) from what the old id
    /// held last; the old record is gone.
    To(SessionId, T),
    /// The old id held nothing to move (`decide` said so, or the record was deleted
    /// meanwhile): nothing changed, and any record written for the new id was removed again.
    Gone,
}

/// Moves the record under `old_key` to a new id, for `change_id`, in rounds: the old record is
/// read, `decide` makes the new record's bytes of it (or `None`: nothing to move), `write`
/// stores them under a new id (given `None`, a fresh one; given the id an earlier round wrote,
/// over that record), and the old record is removed only if it is still what was read. A save
/// to the old id that lands meanwhile fails that last step, and the next round carries its
/// changes over (at most [`CAS_ROUNDS`] rounds, then [`Error::Contended`]).
///
/// The new record is written before the old one goes, so an error at any step leaves the
/// session whole under its old id. (Taking the old record first and putting it back after a
/// failed write lost the session whenever the put-back failed too, as it does when the store
/// is down.) A record written for the new id is removed again on an error or when there is
/// nothing to move (`discard`, best effort: if that fails too, the record is an orphan under
/// an id nobody was given, until it expires).
pub(super) fn move_record<T>(
    tier: &Tier,
    old_key: &[u8],
    mut decide: impl FnMut(&[u8]) -> Result<Option<(Vec<u8>, T)>>,
    mut write: impl FnMut(&[u8], &T, Option<SessionId>) -> Result<SessionId>,
    discard: impl FnOnce(&SessionId),
) -> Result<Moved<T>> {
    let mut written = None;
    let mut rounds = || {
        for _ in 0..CAS_ROUNDS {
            let Some(stored) = tier.get(old_key)? else {
                return Ok(None);
            };
            let Some((bytes, made)) = decide(&stored)? else {
                return Ok(None);
            };
            let id = write(&bytes, &made, written)?;
            written = Some(id);
            let removed = tier.update_with(old_key, |current| match current {
                Some(current) if current == stored.as_slice() => (Update::Remove, Some(true)),
                Some(_) => (Update::Keep, Some(false)),
                None => (Update::Keep, None),
            })?;
            match removed {
                Some(true) => return Ok(Some((id, made))),
                Some(false) => {}
                None => return Ok(None),
            }
        }
        Err(Error::Contended)
    };
    let outcome = rounds();
    match outcome {
        Ok(Some((id, made))) => Ok(Moved::To(id, made)),
        other => {
            if let Some(id) = &written {
                discard(id);
            }
            other.map(|_| Moved::Gone)
        }
    }
}

/// The stored session is gone: the in-memory one must not bring it back.
pub(super) fn gone(session: &mut Session) -> Saved {
    session.state = State::New;
    session.invalidated = true;
    session.persist = false;
    Saved::Gone
}
