//! Loading: the public bodies of create, load and take_flash (one each, whatever the record
//! format).

use super::{Client, SessionStore};
use crate::session::data::{NewReason, Session};
// `Error` is named by the docs of the public methods.
#[allow(unused_imports)]
use crate::session::error::{Error, Result};
use crate::session::id::SessionId;

impl SessionStore {
    /// A new session, not stored, for `reason`.
    pub(crate) fn fresh(&self, reason: NewReason, client: &Client<'_>) -> Result<Session> {
        self.inner.mode.fresh(&self.inner.tier, reason, client)
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
        self.inner
            .mode
            .load(&self.inner.tier, id, client, deliver_flash)
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
        if !session.flash_pending {
            return Ok(());
        }
        session.flash_pending = false;
        self.inner.mode.take_flash(&self.inner.tier, session)
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
