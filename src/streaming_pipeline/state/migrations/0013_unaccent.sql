-- Accents need not be typed (issue 47): `senor` finds `señor`, `Munchen` finds `München`, and each
-- language keeps its stemming and stop words. For every configuration segments use (the standard
-- distribution's languages and `simple`), `unaccent_<name>` is a copy whose word tokens pass
-- through the unaccent dictionary before the language's own; segments are moved to them, which
-- recomputes their stored tsvector (so the full-text index is rebuilt), and search reads queries
-- with the same configurations (state/search_text.py's search_config).
CREATE EXTENSION IF NOT EXISTS unaccent;

DO $$
DECLARE
    cfg record;
    mapping record;
BEGIN
    FOR cfg IN
        SELECT c.cfgname FROM pg_ts_config c
        WHERE c.cfgnamespace = 'pg_catalog'::regnamespace
          AND c.cfgname IN ('simple', 'arabic', 'armenian', 'basque', 'catalan', 'danish', 'dutch',
                            'english', 'finnish', 'french', 'german', 'greek', 'hindi', 'hungarian',
                            'indonesian', 'irish', 'italian', 'lithuanian', 'nepali', 'norwegian',
                            'portuguese', 'romanian', 'russian', 'serbian', 'spanish', 'swedish',
                            'tamil', 'turkish', 'yiddish')
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = 'unaccent_' || cfg.cfgname) THEN
            EXECUTE format('CREATE TEXT SEARCH CONFIGURATION public.%I (COPY = pg_catalog.%I)',
                           'unaccent_' || cfg.cfgname, cfg.cfgname);
            FOR mapping IN
                SELECT t.alias, string_agg(quote_ident(d.dictname), ', ' ORDER BY m.mapseqno) AS dicts
                FROM pg_ts_config_map m
                JOIN ts_token_type('default') t ON t.tokid = m.maptokentype
                JOIN pg_ts_dict d ON d.oid = m.mapdict
                WHERE m.mapcfg = ('pg_catalog.' || cfg.cfgname)::regconfig
                  AND t.alias IN ('word', 'hword', 'hword_part')
                GROUP BY t.alias
            LOOP
                EXECUTE format('ALTER TEXT SEARCH CONFIGURATION public.%I ALTER MAPPING FOR %s WITH unaccent, %s',
                               'unaccent_' || cfg.cfgname, mapping.alias, mapping.dicts);
            END LOOP;
        END IF;
    END LOOP;
END
$$;

-- Text read in bigrams (Chinese, Japanese, ...) stays under `simple`: it has no accents to drop.
UPDATE segments s SET config = u.oid::regconfig
FROM pg_ts_config u
WHERE s.search_text IS NULL AND u.cfgname = 'unaccent_' || (SELECT c.cfgname FROM pg_ts_config c WHERE c.oid = s.config::oid)
  AND u.cfgnamespace = 'public'::regnamespace;
