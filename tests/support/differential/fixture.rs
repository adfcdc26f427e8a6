//! The data every conversation runs against: one template database with the schema, cloned
//! into a pair of databases per worker (one reached through pgmemo, one directly), so both
//! sides have the same relation OIDs (RowDescription carries them) and a conversation's writes
//! never meet another's. `RESET` puts a database's rows back before each conversation.

/// The template the worker databases are cloned from.
pub const TEMPLATE: &str = "diff_tmpl";

/// Schema of the template (run once, as the superuser, in [`TEMPLATE`]).
///
/// `ref` is never written by a conversation (row 12 is not ASCII, for `client_encoding`), so its reads hit entries the cold run stored.
/// `alt.items` shadows `items` under `search_path = alt, public`; `notes` cascades from
/// `items`; `grp_totals` is a view; `use_schema`/`set_tenant` change settings from inside a
/// function; `tenant_items` reads `app.tenant`; `touch_item`, `bump_grp` and the trigger on
/// `alt.items` (into `audit`) write where the statement's text does not say; `diff_reader`
/// may read only `ref` and `alt.items`.
pub const SCHEMA: &str = "
CREATE SCHEMA alt;
CREATE TABLE items(id int PRIMARY KEY, grp int NOT NULL, name text NOT NULL,
    price numeric(10,2), f float8, d date, ts timestamptz, b bytea);
CREATE TABLE alt.items(id int PRIMARY KEY, grp int NOT NULL, name text NOT NULL,
    price numeric(10,2), f float8, d date, ts timestamptz, b bytea);
CREATE TABLE ref(id int PRIMARY KEY, label text NOT NULL);
CREATE TABLE notes(id int PRIMARY KEY, item_id int REFERENCES items(id) ON DELETE CASCADE,
    body text NOT NULL);
CREATE VIEW grp_totals AS SELECT grp, count(*) AS n, sum(price) AS total FROM items GROUP BY grp;
CREATE VIEW tenant_items AS SELECT id, name FROM items
    WHERE name LIKE coalesce(current_setting('app.tenant', true), '') || '%';
CREATE FUNCTION use_schema(s text) RETURNS text LANGUAGE sql
    AS $$ SELECT set_config('search_path', s, false) $$;
CREATE FUNCTION set_tenant(t text) RETURNS text LANGUAGE plpgsql
    AS $$ BEGIN RETURN set_config('app.tenant', t, false); END $$;
CREATE FUNCTION add_one(i int) RETURNS int IMMUTABLE LANGUAGE sql AS $$ SELECT i + 1 $$;
CREATE TABLE audit(item_id int NOT NULL, old_price numeric(10,2));
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN INSERT INTO public.audit VALUES (NEW.id, OLD.price); RETURN NEW; END $$;
CREATE TRIGGER alt_items_audit AFTER UPDATE ON alt.items FOR EACH ROW EXECUTE FUNCTION audit_fn();
CREATE FUNCTION touch_item(i int) RETURNS int LANGUAGE sql
    AS $$ UPDATE public.items SET price = price + 100 WHERE id = i RETURNING id $$;
CREATE PROCEDURE bump_grp(g int) LANGUAGE sql
    AS $$ UPDATE public.items SET grp = grp + 10 WHERE grp = g $$;
GRANT SELECT ON ref TO diff_reader;
GRANT USAGE ON SCHEMA alt TO diff_reader;
GRANT SELECT ON alt.items TO diff_reader;
";

/// Cluster-wide objects (run once in `postgres`, before the template is built).
pub const ROLES: &str = "CREATE ROLE diff_reader;";

/// Puts every row back (one transaction; rows inserted in a fixed order).
pub const RESET: &str = "
BEGIN;
DELETE FROM notes; DELETE FROM items; DELETE FROM alt.items; DELETE FROM ref;
DELETE FROM audit;
INSERT INTO items SELECT g, g % 4, 'item' || g, g * 1.25, g / 3.0,
    date '2024-01-01' + g, timestamptz '2024-01-01 00:00:00+00' + g * interval '7 hours',
    decode(md5(g::text), 'hex') FROM generate_series(1, 20) g;
INSERT INTO alt.items SELECT g, g % 3, 'alt' || g, g * 2.5, g / 7.0,
    date '2023-06-01' + g, timestamptz '2023-06-01 12:00:00+00' + g * interval '1 day',
    decode(md5('alt' || g), 'hex') FROM generate_series(1, 10) g;
INSERT INTO ref SELECT g, CASE WHEN g = 12 THEN 'réf12' ELSE 'ref' || g END
    FROM generate_series(1, 12) g;
INSERT INTO notes SELECT g, (g % 20) + 1, 'note' || g FROM generate_series(1, 15) g;
COMMIT;
";

/// The database worker `w` reaches through pgmemo.
pub fn proxied_db(w: usize) -> String {
    format!("diff_px_{w}")
}

/// The database worker `w` reaches directly.
pub fn direct_db(w: usize) -> String {
    format!("diff_dr_{w}")
}

/// SQL (in `postgres`) creating the template's clones for `workers` workers.
pub fn clone_sql(workers: usize) -> String {
    let mut sql = String::new();
    for w in 0..workers {
        for db in [proxied_db(w), direct_db(w)] {
            sql.push_str(&format!("CREATE DATABASE {db} TEMPLATE {TEMPLATE};\n"));
        }
    }
    sql
}
