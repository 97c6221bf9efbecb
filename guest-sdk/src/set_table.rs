//! Set tables: a set of members per key, stored one member per table entry.
//!
//! Member `m` of key `k` is the entry whose table key is the length of the
//! encoded `k` as 4 big-endian bytes, then the encoded `k`, then the
//! encoded `m`, with an empty value. So every `add` is one changelog record
//! and every `discard` one tombstone: the changelog logs the set operations
//! in order, compaction keeps one record per live member, and recovery
//! replays them into the same set. The length prefix keeps key `ab` with
//! member `c` apart from key `a` with member `bc`.

use std::borrow::Borrow;
use std::marker::PhantomData;

use crate::{Error, Key, Raw, Table};

/// A table whose value per key is a set of members, with keys encoded by
/// [`Key`] for `K` and members by [`Key`] for `M`.
///
/// Members come back as their encoded bytes, in ascending byte order,
/// because [`Key`] only encodes.
///
/// ```no_run
/// use tablehost_guest::SetTable;
///
/// # fn example() -> Result<(), tablehost_guest::Error> {
/// let followers: SetTable<str, str> = SetTable::open("followers")?;
/// followers.add("alice", "bob")?;
/// followers.discard("alice", "carol")?;
/// let members = followers.members("alice")?;
/// assert_eq!(members, vec![b"bob".to_vec()]);
/// # Ok(())
/// # }
/// ```
pub struct SetTable<K: ?Sized, M: ?Sized> {
    table: Table<[u8], Vec<u8>, Raw>,
    types: PhantomData<(*const K, *const M)>,
}

impl<K: ?Sized, M: ?Sized> SetTable<K, M> {
    /// Opens the set table `name`, declared in the agent's configuration like
    /// any other table.
    ///
    /// # Errors
    ///
    /// As [`Table::open`].
    pub fn open(name: &str) -> Result<Self, Error> {
        Ok(Self {
            table: Table::open(name)?,
            types: PhantomData,
        })
    }

    /// Adds `member` to the set of `key` and returns whether it was new.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the read or the write.
    pub fn add<Q, N>(&self, key: &Q, member: &N) -> Result<bool, Error>
    where
        K: Borrow<Q>,
        M: Borrow<N>,
        Q: Key + ?Sized,
        N: Key + ?Sized,
    {
        let entry = member_key(&key.encode_key(), &member.encode_key());
        if self.table.contains(entry.as_slice())? {
            return Ok(false);
        }
        self.table.set(entry.as_slice(), &Vec::new())?;
        Ok(true)
    }

    /// Removes `member` from the set of `key` and returns whether it was
    /// there.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the read or the delete.
    pub fn discard<Q, N>(&self, key: &Q, member: &N) -> Result<bool, Error>
    where
        K: Borrow<Q>,
        M: Borrow<N>,
        Q: Key + ?Sized,
        N: Key + ?Sized,
    {
        let entry = member_key(&key.encode_key(), &member.encode_key());
        if !self.table.contains(entry.as_slice())? {
            return Ok(false);
        }
        self.table.delete(entry.as_slice())?;
        Ok(true)
    }

    /// Returns whether `member` is in the set of `key`.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the read.
    pub fn contains<Q, N>(&self, key: &Q, member: &N) -> Result<bool, Error>
    where
        K: Borrow<Q>,
        M: Borrow<N>,
        Q: Key + ?Sized,
        N: Key + ?Sized,
    {
        self.table
            .contains(member_key(&key.encode_key(), &member.encode_key()).as_slice())
    }

    /// Returns the encoded members of the set of `key`, in ascending byte
    /// order; a missing key is the empty set.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the scan.
    pub fn members<Q>(&self, key: &Q) -> Result<Vec<Vec<u8>>, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        self.members_of_encoded(&key.encode_key())
    }

    /// Removes every member of the set of `key` and returns how many there
    /// were. Each removal is its own changelog tombstone.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the scan or a delete.
    pub fn clear<Q>(&self, key: &Q) -> Result<u64, Error>
    where
        K: Borrow<Q>,
        Q: Key + ?Sized,
    {
        let encoded = key.encode_key();
        let members = self.members_of_encoded(&encoded)?;
        for member in &members {
            self.table.delete(member_key(&encoded, member).as_slice())?;
        }
        Ok(members.len() as u64)
    }

    /// Adds every member of `members` to the set of `key` (set union) and
    /// returns how many were new. Each addition is its own changelog record.
    ///
    /// # Errors
    ///
    /// As [`SetTable::add`].
    pub fn union<'a, Q, N>(
        &self,
        key: &Q,
        members: impl IntoIterator<Item = &'a N>,
    ) -> Result<u64, Error>
    where
        K: Borrow<Q>,
        M: Borrow<N>,
        Q: Key + ?Sized,
        N: Key + ?Sized + 'a,
    {
        let mut added = 0;
        for member in members {
            added += u64::from(self.add(key, member)?);
        }
        Ok(added)
    }

    /// Removes every member of `members` from the set of `key` (set
    /// difference) and returns how many were there. Each removal is its
    /// own changelog tombstone.
    ///
    /// # Errors
    ///
    /// As [`SetTable::discard`].
    pub fn difference<'a, Q, N>(
        &self,
        key: &Q,
        members: impl IntoIterator<Item = &'a N>,
    ) -> Result<u64, Error>
    where
        K: Borrow<Q>,
        M: Borrow<N>,
        Q: Key + ?Sized,
        N: Key + ?Sized + 'a,
    {
        let mut removed = 0;
        for member in members {
            removed += u64::from(self.discard(key, member)?);
        }
        Ok(removed)
    }

    /// Keeps in the set of `key` only the members also in `members` (set
    /// intersection) and returns how many were removed. Each removal is
    /// its own changelog tombstone.
    ///
    /// # Errors
    ///
    /// [`Error::Table`] when the host rejects the scan or a delete.
    pub fn intersection<'a, Q, N>(
        &self,
        key: &Q,
        members: impl IntoIterator<Item = &'a N>,
    ) -> Result<u64, Error>
    where
        K: Borrow<Q>,
        M: Borrow<N>,
        Q: Key + ?Sized,
        N: Key + ?Sized + 'a,
    {
        let encoded = key.encode_key();
        let retained: std::collections::BTreeSet<Vec<u8>> = members
            .into_iter()
            .map(|m| m.encode_key().into_owned())
            .collect();
        let mut removed = 0;
        for member in self.members_of_encoded(&encoded)? {
            if !retained.contains(&member) {
                self.table
                    .delete(member_key(&encoded, &member).as_slice())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn members_of_encoded(&self, encoded_key: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        let prefix = member_key(encoded_key, &[]);
        let mut members = Vec::new();
        for entry in self.table.prefix(prefix.as_slice()) {
            let (entry_key, _) = entry?;
            members.push(entry_key[prefix.len()..].to_vec());
        }
        Ok(members)
    }
}

/// Returns the table key of `member` in the set of `key`: the length of
/// `key` as 4 big-endian bytes, `key`, then `member`.
fn member_key(key: &[u8], member: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len() + member.len());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(member);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_key_prefixes_key_length() {
        assert_eq!(member_key(b"ab", b"c"), b"\x00\x00\x00\x02abc".to_vec());
        assert_eq!(member_key(b"a", b"bc"), b"\x00\x00\x00\x01abc".to_vec());
        assert_eq!(member_key(b"", b""), vec![0, 0, 0, 0]);
    }
}
