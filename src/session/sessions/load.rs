//! Loading: a session by id (or a new one), decided under the page lock from the record
//! header alone.

#[cfg(feature = "perl")]
use super::Mode;
use super::{Client, SessionStore};
use crate::session::data::{NewReason, Session, from_unix_secs};
use crate::session::error::{Error, Result};
use crate::session::id::SessionId;
use crate::session::record::{Record, RecordView, Times};
use crate::{Expiry, Update};

/// What a load found under the presented id, decided under the page lock.
pub(super) enum Found {
    Missing,
    Unreadable(Error),
    Dropped(NewReason),
    Live {
        bytes: Vec<u8>,
        extended: Option<u64>,
    },
}

impl SessionStore {
    /// The new expiry if a load at `now` should move the idle deadline.
    pub(super) fn extension(&self, times: Times, now: u64) -> Option<u64> {
        self.inner.idle?;
        if now.saturating_sub(times.active) < self.inner.threshold {
            return None;
        }
        let expires = self.deadline(times.created, now);
        (expires > times.expires).then_some(expires)
    }

    pub(crate) fn fresh(&self, reason: NewReason, client: &Client<'_>) -> Result<Session> {
        #[cfg(feature = "perl")]
        if let Mode::Catalyst(config) = &self.inner.mode {
            return self.catalyst_fresh(config, reason, client);
        }
        let now = self.now();
        let times = Times {
            created: now,
            updated: now,
            active: now,
            expires: self.deadline(now, now),
        };
        Ok(Session::new(
            self.new_id()?,
            reason,
            times,
            self.binding_for(client),
        ))
    }

    /// A new session with a new id, bound to `client` as configured. It is written by the
    /// first [`save`](Self::save), even if it holds nothing.
    ///
    /// # Errors
    /// [`Error::Random`] if no id can be generated.
    pub fn create(&self, client: &Client<'_>) -> Result<Session> {
        self.fresh(NewReason::Created, client)
    }

    /// The session `id` names, for a request from `client`; with no id, or one that has no
    /// live session, a new session with a **new** id — never the one presented — and the
    /// reason ([`Session::origin`]). An expired session, or one bound to another client, is
    /// deleted on sight. Flash values stored for this load are delivered and removed from the
    /// cache at once, so no other load sees them.
    ///
    /// A new session from `load` is not stored until it holds a value (or a flash value) and
    /// is saved: requests that never use their session leave nothing in the cache.
    ///
    /// # Errors
    /// [`Error::BadRecord`] or [`Error::UnsupportedVersion`] if the cache holds something
    /// under the id that this version cannot read (it is left alone); [`Error::Cache`];
    /// [`Error::Random`].
    pub fn load(&self, id: Option<&SessionId>, client: &Client<'_>) -> Result<Session> {
        self.load_with(id, client, true)
    }

    /// [`load`](Self::load), except that stored flash values stay in the store until they are
    /// read: [`take_flash`](Self::take_flash) takes them, and until then
    /// [`Session::get_flash`] says so ([`Error::FlashNotTaken`]). This is how Catalyst
    /// treated flash values, and what the request cycle ([`Visit`](crate::session::Visit))
    /// does: a request that loads the session but never reads its flash does not consume it.
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_leaving_flash(
        &self,
        id: Option<&SessionId>,
        client: &Client<'_>,
    ) -> Result<Session> {
        self.load_with(id, client, false)
    }

    fn load_with(
        &self,
        id: Option<&SessionId>,
        client: &Client<'_>,
        deliver_flash: bool,
    ) -> Result<Session> {
        #[cfg(feature = "perl")]
        if let Mode::Catalyst(config) = &self.inner.mode {
            return self.catalyst_load(config, id, client, deliver_flash);
        }
        let Some(id) = id else {
            return self.fresh(NewReason::NoId, client);
        };
        let now = self.now();
        let mut found = Found::Missing;
        self.inner.records.update(&self.key(id), |old| match old {
            // An entry the cache no longer shows may still be there, expired: remove it.
            None => Update::Remove,
            Some(bytes) => {
                let (seen, update) = self.inspect(bytes, now, client, deliver_flash);
                found = seen;
                update
            }
        })?;
        match found {
            Found::Missing => self.fresh(NewReason::Unknown, client),
            Found::Unreadable(e) => Err(e),
            Found::Dropped(reason) => self.fresh(reason, client),
            Found::Live { bytes, extended } => {
                let mut record = Record::decode(&bytes)?;
                if let Some(expires) = extended {
                    record.times.active = now;
                    record.times.expires = expires;
                }
                let pending = !deliver_flash && !record.flash.is_empty();
                if !deliver_flash {
                    record.flash.clear();
                }
                let mut session = Session::loaded(*id, record, extended.is_some());
                session.flash_pending = pending;
                Ok(session)
            }
        }
    }

    /// Takes the flash values of a session loaded by
    /// [`load_leaving_flash`](Self::load_leaving_flash) out of the store, in one atomic step
    /// (so exactly one request receives them), and hands them to `session`
    /// ([`Session::get_flash`]). Does nothing if there are none or they were taken already.
    ///
    /// # Errors
    /// [`Error::BadRecord`] / [`Error::UnsupportedVersion`] if the stored record cannot be
    /// read (it is left alone; the session then has no flash values); [`Error::Cache`].
    pub fn take_flash(&self, session: &mut Session) -> Result<()> {
        #[cfg(feature = "perl")]
        if let Mode::Catalyst(_) = &self.inner.mode {
            return self.catalyst_take_flash(session);
        }
        if !session.flash_pending {
            return Ok(());
        }
        session.flash_pending = false;
        let mut taken: Option<Result<crate::session::record::Map>> = None;
        self.inner
            .records
            .update(&self.key(&session.id), |current| {
                let Some(bytes) = current else {
                    return Update::Keep;
                };
                let view = match RecordView::parse(bytes) {
                    Ok(view) => view,
                    Err(e) => {
                        taken = Some(Err(e));
                        return Update::Keep;
                    }
                };
                if !view.header.has_flash() {
                    return Update::Keep;
                }
                match view.flash() {
                    Ok(flash) => {
                        taken = Some(Ok(flash));
                        let times = view.header.times;
                        Update::SetWith(
                            view.patched(times.active, times.expires, true),
                            Expiry::At(from_unix_secs(times.expires)),
                        )
                    }
                    Err(e) => {
                        taken = Some(Err(e));
                        Update::Keep
                    }
                }
            })?;
        if let Some(flash) = taken.transpose()? {
            session.flash_in = flash;
        }
        Ok(())
    }

    /// What a load at `now` by `client` makes of the stored `bytes`, and what it does to
    /// them (under the page lock: only the header is parsed).
    pub(super) fn inspect(
        &self,
        bytes: &[u8],
        now: u64,
        client: &Client<'_>,
        deliver_flash: bool,
    ) -> (Found, Update) {
        let view = match RecordView::parse(bytes) {
            Ok(view) => view,
            Err(e) => return (Found::Unreadable(e), Update::Keep),
        };
        let times = view.header.times;
        if now >= times.expires {
            return (Found::Dropped(NewReason::Expired), Update::Remove);
        }
        if let Some(reason) = self.binding_mismatch(&view, client) {
            return (Found::Dropped(reason), Update::Remove);
        }
        let extended = self.extension(times, now);
        let drop_flash = deliver_flash && view.header.has_flash();
        let found = Found::Live {
            bytes: bytes.to_vec(),
            extended,
        };
        if extended.is_none() && !drop_flash {
            return (found, Update::Keep);
        }
        let (active, expires) = extended.map_or((times.active, times.expires), |e| (now, e));
        let update = Update::SetWith(
            view.patched(active, expires, drop_flash),
            Expiry::At(from_unix_secs(expires)),
        );
        (found, update)
    }

    /// [`load`](Self::load) for an id as the client sent it: one that is not well formed is
    /// never looked up, and gives a new session ([`NewReason::Malformed`]).
    ///
    /// # Errors
    /// As [`load`](Self::load).
    pub fn load_str(&self, presented: Option<&str>, client: &Client<'_>) -> Result<Session> {
        match presented.map(|text| self.id_format().parse(text)) {
            None => self.fresh(NewReason::NoId, client),
            Some(Err(e)) => self.fresh(NewReason::Malformed(e), client),
            Some(Ok(id)) => self.load(Some(&id), client),
        }
    }
}
