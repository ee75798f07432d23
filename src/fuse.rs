//! The local data plane: a FUSE file system over an object store, serving one access point's
//! directory of a bucket, so emulated S3 Files volumes are real, mountable file systems.
//!
//! Storage goes through `object_store`, which speaks to any S3-compatible endpoint and to a
//! local directory (the emulator's default). Layout, as S3 Files keeps it: the file `a/b.txt`
//! under the access point root `/vol` of a file system with prefix `k8s/` is the object
//! `k8s/vol/a/b.txt`. A directory exists while objects live under it; an empty directory is kept
//! by a zero-byte marker object `<dir>/.s3files-dir` that listings hide.
//!
//! Each object carries its owner, group, mode and time as user metadata (extended attributes
//! for local buckets; see `objects`), and every operation acts as the access point's POSIX user.
//! Sequential reads run ranged GETs ahead of the reader within a per-mount memory budget
//! (`prefetch`). Writes go to a staging file on local disk (memory stays bounded however large
//! the file) and are uploaded when the file is flushed, fsynced or closed, so a reader opening
//! the file after the writer closed it sees the data. docs/ARCHITECTURE.md has the design.

mod access;
mod dircache;
mod error;
pub mod fs;
mod handles;
pub mod helper;
mod inodes;
mod kernel;
pub mod objects;
mod part;
pub mod prefetch;
mod segments;
pub mod staging;
#[cfg(test)]
mod test_store;
mod upload;
mod writer;
