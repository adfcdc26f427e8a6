//! Approximate heap bytes of the catalog memos' keys and answers, for their byte bounds:
//! resolution and function keys hold names cut from client SQL, and a statement naming
//! thousands of relations must weigh what it holds, not count as one entry.

use std::mem::size_of;

use super::{
    FuncArgs, FuncFacts, FuncRef, PathKey, ReadSet, RelName, Resolution, SetKey, WriteSet,
};

/// One allocation's overhead in the allocator, roughly.
const ALLOC: usize = 16;

fn text(s: &str) -> usize {
    s.len() + ALLOC
}

fn optional(s: Option<&String>) -> usize {
    s.map_or(0, |s| text(s))
}

fn path(p: &PathKey) -> usize {
    size_of::<PathKey>() + text(&p.db) + text(&p.user) + text(&p.search_path)
}

fn rel_name(r: &RelName) -> usize {
    size_of::<RelName>() + text(&r.name) + optional(r.schema.as_ref())
}

fn func_ref(f: &FuncRef) -> usize {
    let args = match &f.args {
        FuncArgs::Types(oids) => size_of_val(oids.as_slice()) + ALLOC,
        FuncArgs::Any | FuncArgs::Count(_) => 0,
    };
    size_of::<FuncRef>() + text(&f.name) + optional(f.schema.as_ref()) + args
}

pub(super) fn resolve_key(k: &(PathKey, Vec<RelName>)) -> usize {
    path(&k.0) + k.1.iter().map(rel_name).sum::<usize>() + ALLOC
}

pub(super) fn resolution(v: &Resolution) -> usize {
    let each = v.0.iter().map(|r| {
        let facts = r
            .relation
            .as_ref()
            .map_or(0, |f| text(&f.schema) + text(&f.name));
        size_of_val(r) + rel_name(&r.name) + facts
    });
    each.sum::<usize>() + ALLOC
}

pub(super) fn functions_key(k: &(PathKey, Vec<FuncRef>)) -> usize {
    path(&k.0) + k.1.iter().map(func_ref).sum::<usize>() + ALLOC
}

pub(super) fn function_facts(v: &std::sync::Arc<[FuncFacts]>) -> usize {
    size_of_val(v.as_ref()) + ALLOC
}

pub(super) fn set_key(k: &SetKey) -> usize {
    size_of::<SetKey>() + text(&k.db) + size_of_val(k.oids.as_slice()) + ALLOC
}

pub(super) fn read_set(v: &std::sync::Arc<ReadSet>) -> usize {
    size_of::<ReadSet>()
        + size_of_val(v.tags.as_slice())
        + size_of_val(v.blockers.as_slice())
        + size_of_val(v.user_functions.as_slice())
        + 3 * ALLOC
}

pub(super) fn write_set(v: &std::sync::Arc<WriteSet>) -> usize {
    size_of::<WriteSet>()
        + size_of_val(v.tags.as_slice())
        + size_of_val(v.epoch.as_slice())
        + 2 * ALLOC
}

pub(super) fn bodies(v: &std::sync::Arc<[super::FuncBody]>) -> usize {
    let each = v.iter().map(|b| {
        let source = match &b.source {
            super::BodySource::SqlText {
                text: t,
                search_path,
            } => text(t) + optional(search_path.as_ref()),
            super::BodySource::Atomic {
                relations,
                functions,
            } => size_of_val(relations.as_slice()) + size_of_val(functions.as_slice()) + 2 * ALLOC,
            super::BodySource::Opaque { language } => text(language),
        };
        size_of::<super::FuncBody>() + text(&b.name) + source
    });
    each.sum::<usize>() + ALLOC
}
