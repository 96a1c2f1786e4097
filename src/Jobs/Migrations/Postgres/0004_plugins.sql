-- The plugin catalog: what each analysis worker can run, published at its start, on a hot
-- reload and every minute; gateways list and validate from the rows of recently seen workers.
CREATE TABLE plugins (
    worker_id text NOT NULL,
    plugin_id text NOT NULL,
    folder text NOT NULL,
    loaded boolean NOT NULL,
    error text NULL,
    manifest_json text NULL,
    updated_ms bigint NOT NULL,
    PRIMARY KEY (worker_id, plugin_id)
);
CREATE INDEX plugins_updated ON plugins (updated_ms);
