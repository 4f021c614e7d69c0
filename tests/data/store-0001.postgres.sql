--
-- PostgreSQL database dump
--

\restrict HqVd2IPtfNBkBIZ0QO7RiBQnrq6HOFex253WBJavejlq4CzLdh3CJHkSye3duLe

-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: alembic_version; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.alembic_version (
    version_num character varying(32) NOT NULL
);


--
-- Name: blobs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.blobs (
    unit_id integer NOT NULL,
    kind character varying(128) NOT NULL,
    uri character varying(512) NOT NULL,
    sha256 character varying(64) NOT NULL,
    bytes bigint NOT NULL,
    row_count bigint NOT NULL,
    schema_json text NOT NULL,
    created_at timestamp with time zone NOT NULL
);


--
-- Name: configs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.configs (
    config_id character varying(64) NOT NULL,
    method character varying(64),
    chunk_size integer,
    ema_decay double precision,
    attention_sink_size integer,
    key_bits_normal integer,
    value_bits_normal integer,
    key_bits_sink_outlier integer,
    value_bits_sink_outlier integer,
    outlier_threshold_relative double precision,
    outlier_threshold_abs double precision,
    value_quant_groups integer,
    pre_rope_keys boolean,
    sink_protection boolean,
    outlier_detection boolean,
    statistics character varying(64),
    range_mode character varying(64),
    quantize_current_chunk boolean,
    group_size integer,
    residual_length integer,
    calibration_path text,
    config_json jsonb NOT NULL
);


--
-- Name: results; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.results (
    unit_id integer NOT NULL,
    metric character varying(128) NOT NULL,
    value double precision
);


--
-- Name: samples; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.samples (
    unit_id integer NOT NULL,
    sample_id character varying(256) NOT NULL,
    prediction text NOT NULL,
    answers jsonb NOT NULL,
    score double precision,
    prompt_tokens integer NOT NULL,
    extra jsonb NOT NULL
);


--
-- Name: sweeps; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.sweeps (
    sweep_id character varying(128) NOT NULL,
    name character varying(256) NOT NULL,
    spec jsonb NOT NULL,
    created_by character varying(128),
    created_at timestamp with time zone NOT NULL,
    status character varying(16) NOT NULL,
    finished_at timestamp with time zone,
    CONSTRAINT ck_sweeps_status CHECK (((status)::text = ANY ((ARRAY['running'::character varying, 'done'::character varying, 'failed'::character varying, 'cancelled'::character varying])::text[])))
);


--
-- Name: unit_summaries; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.unit_summaries (
    unit_id integer NOT NULL,
    method character varying(64) NOT NULL,
    n_samples integer NOT NULL,
    score double precision,
    perplexity double precision,
    kl double precision,
    top1_agreement double precision,
    avg_key_bits double precision,
    avg_value_bits double precision,
    kv_bytes bigint,
    fp16_kv_bytes bigint,
    compression_ratio double precision,
    outlier_ratio double precision,
    prefill_tokens_per_s double precision,
    decode_tokens_per_s double precision,
    peak_memory_bytes bigint,
    worker character varying(256),
    device character varying(256),
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    written_at timestamp with time zone NOT NULL,
    git_commit character varying(64),
    environment jsonb NOT NULL
);


--
-- Name: units; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.units (
    unit_id integer NOT NULL,
    sweep_id character varying(128) NOT NULL,
    model_id character varying(256) NOT NULL,
    config_id character varying(64) NOT NULL,
    task character varying(128) NOT NULL,
    shard character varying(32) NOT NULL,
    status character varying(16) NOT NULL,
    attempts integer NOT NULL,
    worker character varying(256),
    device character varying(256),
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    error text,
    CONSTRAINT ck_units_status CHECK (((status)::text = ANY ((ARRAY['pending'::character varying, 'running'::character varying, 'done'::character varying, 'failed'::character varying, 'skipped'::character varying])::text[])))
);


--
-- Name: units_unit_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.units_unit_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: units_unit_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.units_unit_id_seq OWNED BY public.units.unit_id;


--
-- Name: v_task_scores; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.v_task_scores AS
 WITH agg AS (
         SELECT u.sweep_id,
            u.model_id,
            u.config_id,
            c.method,
            c.key_bits_normal,
            c.value_bits_normal,
            u.task,
            count(*) AS n_shards,
            sum(s.n_samples) AS n_samples,
            (sum((s.score * (s.n_samples)::double precision)) / (NULLIF(sum(
                CASE
                    WHEN (s.score IS NOT NULL) THEN s.n_samples
                    ELSE NULL::integer
                END), 0))::double precision) AS score,
            (sum((s.perplexity * (s.n_samples)::double precision)) / (NULLIF(sum(
                CASE
                    WHEN (s.perplexity IS NOT NULL) THEN s.n_samples
                    ELSE NULL::integer
                END), 0))::double precision) AS perplexity,
            (sum((s.kl * (s.n_samples)::double precision)) / (NULLIF(sum(
                CASE
                    WHEN (s.kl IS NOT NULL) THEN s.n_samples
                    ELSE NULL::integer
                END), 0))::double precision) AS kl,
            (sum((s.top1_agreement * (s.n_samples)::double precision)) / (NULLIF(sum(
                CASE
                    WHEN (s.top1_agreement IS NOT NULL) THEN s.n_samples
                    ELSE NULL::integer
                END), 0))::double precision) AS top1_agreement,
            (sum((s.avg_key_bits * (s.n_samples)::double precision)) / (NULLIF(sum(
                CASE
                    WHEN (s.avg_key_bits IS NOT NULL) THEN s.n_samples
                    ELSE NULL::integer
                END), 0))::double precision) AS avg_key_bits,
            (sum((s.avg_value_bits * (s.n_samples)::double precision)) / (NULLIF(sum(
                CASE
                    WHEN (s.avg_value_bits IS NOT NULL) THEN s.n_samples
                    ELSE NULL::integer
                END), 0))::double precision) AS avg_value_bits,
            (sum((s.compression_ratio * (s.n_samples)::double precision)) / (NULLIF(sum(
                CASE
                    WHEN (s.compression_ratio IS NOT NULL) THEN s.n_samples
                    ELSE NULL::integer
                END), 0))::double precision) AS compression_ratio
           FROM ((public.units u
             JOIN public.unit_summaries s ON ((s.unit_id = u.unit_id)))
             JOIN public.configs c ON (((c.config_id)::text = (u.config_id)::text)))
          GROUP BY u.sweep_id, u.model_id, u.config_id, c.method, c.key_bits_normal, c.value_bits_normal, u.task
        ), baseline AS (
         SELECT agg.sweep_id,
            agg.model_id,
            agg.task,
            (sum((agg.score * (agg.n_samples)::double precision)) / (NULLIF(sum(
                CASE
                    WHEN (agg.score IS NOT NULL) THEN agg.n_samples
                    ELSE NULL::bigint
                END), (0)::numeric))::double precision) AS baseline_score
           FROM agg
          WHERE ((agg.method)::text = 'none'::text)
          GROUP BY agg.sweep_id, agg.model_id, agg.task
        )
 SELECT a.sweep_id,
    a.model_id,
    a.config_id,
    a.method,
    a.key_bits_normal,
    a.value_bits_normal,
    a.task,
    a.n_shards,
    a.n_samples,
    a.score,
    a.perplexity,
    a.kl,
    a.top1_agreement,
    a.avg_key_bits,
    a.avg_value_bits,
    a.compression_ratio,
    b.baseline_score,
    (a.score - b.baseline_score) AS score_delta
   FROM (agg a
     LEFT JOIN baseline b ON ((((b.sweep_id)::text = (a.sweep_id)::text) AND ((b.model_id)::text = (a.model_id)::text) AND ((b.task)::text = (a.task)::text))));


--
-- Name: v_unit_results; Type: VIEW; Schema: public; Owner: -
--

CREATE VIEW public.v_unit_results AS
 SELECT u.unit_id,
    u.sweep_id,
    sw.name AS sweep_name,
    u.model_id,
    u.config_id,
    c.method,
    c.key_bits_normal,
    c.value_bits_normal,
    c.key_bits_sink_outlier,
    c.value_bits_sink_outlier,
    c.chunk_size,
    c.ema_decay,
    c.attention_sink_size,
    c.outlier_threshold_relative,
    c.outlier_threshold_abs,
    c.value_quant_groups,
    c.group_size,
    c.residual_length,
    c.pre_rope_keys,
    c.sink_protection,
    c.outlier_detection,
    c.statistics,
    c.range_mode,
    c.quantize_current_chunk,
    u.task,
    u.shard,
    u.status,
    s.n_samples,
    s.score,
    s.perplexity,
    s.kl,
    s.top1_agreement,
    s.avg_key_bits,
    s.avg_value_bits,
    s.kv_bytes,
    s.fp16_kv_bytes,
    s.compression_ratio,
    s.outlier_ratio,
    s.prefill_tokens_per_s,
    s.decode_tokens_per_s,
    s.peak_memory_bytes,
    s.worker,
    s.device,
    s.finished_at
   FROM (((public.units u
     JOIN public.unit_summaries s ON ((s.unit_id = u.unit_id)))
     JOIN public.configs c ON (((c.config_id)::text = (u.config_id)::text)))
     JOIN public.sweeps sw ON (((sw.sweep_id)::text = (u.sweep_id)::text)));


--
-- Name: units unit_id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.units ALTER COLUMN unit_id SET DEFAULT nextval('public.units_unit_id_seq'::regclass);


--
-- Data for Name: alembic_version; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.alembic_version VALUES ('0001');


--
-- Data for Name: blobs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.blobs VALUES (1, 'outlier_channels', 'outlier_channels/72/72a316437722b4efd34c02ab5e76cb833b19ea6474c939cdeb87520f6ae71abd.parquet', '72a316437722b4efd34c02ab5e76cb833b19ea6474c939cdeb87520f6ae71abd', 755, 2, '[{"name": "layer", "type": "int32", "nullable": true}, {"name": "channel", "type": "int32", "nullable": true}]', '2026-12-03 11:04:05.483101+00');


--
-- Data for Name: configs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.configs VALUES ('74841f98e422', 'kivi', 512, 0.9, 4, 2, 2, 8, 8, 3, NULL, 1, false, true, true, 'ema', 'expand', false, 32, 128, NULL, '{"method": "kivi", "ema_decay": 0.9, "chunk_size": 512, "group_size": 32, "range_mode": "expand", "statistics": "ema", "pre_rope_keys": false, "key_bits_normal": 2, "residual_length": 128, "sink_protection": true, "calibration_path": null, "outlier_detection": true, "value_bits_normal": 2, "value_quant_groups": 1, "attention_sink_size": 4, "key_bits_sink_outlier": 8, "outlier_threshold_abs": null, "quantize_current_chunk": false, "value_bits_sink_outlier": 8, "outlier_threshold_relative": 3.0}');
INSERT INTO public.configs VALUES ('b977c368f583', 'none', 512, 0.9, 4, 16, 16, 16, 16, 3, NULL, 1, true, true, true, 'ema', 'expand', false, 32, 0, NULL, '{"method": "none", "ema_decay": 0.9, "chunk_size": 512, "group_size": 32, "range_mode": "expand", "statistics": "ema", "pre_rope_keys": true, "key_bits_normal": 16, "residual_length": 0, "sink_protection": true, "calibration_path": null, "outlier_detection": true, "value_bits_normal": 16, "value_quant_groups": 1, "attention_sink_size": 4, "key_bits_sink_outlier": 16, "outlier_threshold_abs": null, "quantize_current_chunk": false, "value_bits_sink_outlier": 16, "outlier_threshold_relative": 3.0}');
INSERT INTO public.configs VALUES ('1ae84e94358a', 'streamkv', 512, 0.9, 4, 4, 4, 8, 8, 3, NULL, 1, true, true, true, 'ema', 'expand', false, 32, 0, NULL, '{"method": "streamkv", "ema_decay": 0.9, "chunk_size": 512, "group_size": 32, "range_mode": "expand", "statistics": "ema", "pre_rope_keys": true, "key_bits_normal": 4, "residual_length": 0, "sink_protection": true, "calibration_path": null, "outlier_detection": true, "value_bits_normal": 4, "value_quant_groups": 1, "attention_sink_size": 4, "key_bits_sink_outlier": 8, "outlier_threshold_abs": null, "quantize_current_chunk": false, "value_bits_sink_outlier": 8, "outlier_threshold_relative": 3.0}');
INSERT INTO public.configs VALUES ('a2886d8a6e08', 'streamkv', 256, 0.9, 4, 4, 4, 8, 8, 3, 5.5, 1, true, true, true, 'ema', 'expand', true, 32, 0, NULL, '{"method": "streamkv", "ema_decay": 0.9, "chunk_size": 256, "group_size": 32, "range_mode": "expand", "statistics": "ema", "pre_rope_keys": true, "key_bits_normal": 4, "residual_length": 0, "sink_protection": true, "calibration_path": null, "outlier_detection": true, "value_bits_normal": 4, "value_quant_groups": 1, "attention_sink_size": 4, "key_bits_sink_outlier": 8, "outlier_threshold_abs": 5.5, "quantize_current_chunk": true, "value_bits_sink_outlier": 8, "outlier_threshold_relative": 3.0}');


--
-- Data for Name: results; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.results VALUES (1, 'kl', 0.015625);
INSERT INTO public.results VALUES (1, 'perplexity', 9.5);
INSERT INTO public.results VALUES (1, 'score', 0.5);
INSERT INTO public.results VALUES (1, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (2, 'kl', 0.015625);
INSERT INTO public.results VALUES (2, 'perplexity', 9.5);
INSERT INTO public.results VALUES (2, 'score', 1);
INSERT INTO public.results VALUES (2, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (5, 'kl', 0.015625);
INSERT INTO public.results VALUES (5, 'perplexity', 9.5);
INSERT INTO public.results VALUES (5, 'score', 0.25);
INSERT INTO public.results VALUES (5, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (6, 'kl', 0.015625);
INSERT INTO public.results VALUES (6, 'perplexity', 9.5);
INSERT INTO public.results VALUES (6, 'score', 0.5);
INSERT INTO public.results VALUES (6, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (3, 'kl', 0.015625);
INSERT INTO public.results VALUES (3, 'perplexity', 9.5);
INSERT INTO public.results VALUES (3, 'score', 0.75);
INSERT INTO public.results VALUES (3, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (7, 'kl', 0.015625);
INSERT INTO public.results VALUES (7, 'perplexity', 9.5);
INSERT INTO public.results VALUES (7, 'score', 0.625);
INSERT INTO public.results VALUES (7, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (9, 'kl', 0.015625);
INSERT INTO public.results VALUES (9, 'perplexity', 9.5);
INSERT INTO public.results VALUES (9, 'score', 0.375);
INSERT INTO public.results VALUES (9, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (13, 'kl', 0.015625);
INSERT INTO public.results VALUES (13, 'perplexity', 9.5);
INSERT INTO public.results VALUES (13, 'score', 0.5);
INSERT INTO public.results VALUES (13, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (15, 'kl', 0.015625);
INSERT INTO public.results VALUES (15, 'perplexity', 9.5);
INSERT INTO public.results VALUES (15, 'score', 0.4375);
INSERT INTO public.results VALUES (15, 'top1_agreement', 0.96875);
INSERT INTO public.results VALUES (16, 'kl', 0.015625);
INSERT INTO public.results VALUES (16, 'perplexity', 9.5);
INSERT INTO public.results VALUES (16, 'score', 0.125);
INSERT INTO public.results VALUES (16, 'top1_agreement', 0.96875);


--
-- Data for Name: samples; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.samples VALUES (1, 's000', 'pred 0 0', '["a0"]', 0, 100, '{"minute": 0}');
INSERT INTO public.samples VALUES (1, 's001', 'pred 0 1', '["a1"]', 1, 101, '{"minute": 0}');
INSERT INTO public.samples VALUES (2, 's000', 'pred 1 0', '["a0"]', 0, 100, '{"minute": 1}');
INSERT INTO public.samples VALUES (2, 's001', 'pred 1 1', '["a1"]', 1, 101, '{"minute": 1}');
INSERT INTO public.samples VALUES (5, 's000', 'pred 2 0', '["a0"]', 0, 100, '{"minute": 2}');
INSERT INTO public.samples VALUES (5, 's001', 'pred 2 1', '["a1"]', 1, 101, '{"minute": 2}');
INSERT INTO public.samples VALUES (6, 's000', 'pred 3 0', '["a0"]', 0, 100, '{"minute": 3}');
INSERT INTO public.samples VALUES (6, 's001', 'pred 3 1', '["a1"]', 1, 101, '{"minute": 3}');
INSERT INTO public.samples VALUES (3, 's000', 'pred 4 0', '["a0"]', 0, 100, '{"minute": 4}');
INSERT INTO public.samples VALUES (3, 's001', 'pred 4 1', '["a1"]', 1, 101, '{"minute": 4}');
INSERT INTO public.samples VALUES (7, 's000', 'pred 5 0', '["a0"]', 0, 100, '{"minute": 5}');
INSERT INTO public.samples VALUES (7, 's001', 'pred 5 1', '["a1"]', 1, 101, '{"minute": 5}');
INSERT INTO public.samples VALUES (9, 's000', 'pred 6 0', '["a0"]', 0, 100, '{"minute": 6}');
INSERT INTO public.samples VALUES (9, 's001', 'pred 6 1', '["a1"]', 1, 101, '{"minute": 6}');
INSERT INTO public.samples VALUES (13, 's000', 'pred 7 0', '["a0"]', 0, 100, '{"minute": 7}');
INSERT INTO public.samples VALUES (13, 's001', 'pred 7 1', '["a1"]', 1, 101, '{"minute": 7}');
INSERT INTO public.samples VALUES (15, 's000', 'pred 8 0', '["a0"]', 0, 100, '{"minute": 8}');
INSERT INTO public.samples VALUES (15, 's001', 'pred 8 1', '["a1"]', 1, 101, '{"minute": 8}');
INSERT INTO public.samples VALUES (16, 's000', 'pred 9 0', '["a0"]', 0, 100, '{"minute": 9}');
INSERT INTO public.samples VALUES (16, 's001', 'pred 9 1', '["a1"]', 1, 101, '{"minute": 9}');


--
-- Data for Name: sweeps; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.sweeps VALUES ('sw-a', 'fixture sw-a', '{"tasks": ["qa", "sum"]}', '0001', '2026-12-03 11:04:05.372691+00', 'running', NULL);
INSERT INTO public.sweeps VALUES ('sw-b', 'fixture sw-b', '{"tasks": ["qa", "sum"]}', '0001', '2026-12-03 11:04:05.423119+00', 'done', '2026-12-03 11:04:05.700594+00');


--
-- Data for Name: unit_summaries; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.unit_summaries VALUES (1, 'none', 2, 0.5, 9.5, 0.015625, 0.96875, 16.25, 16.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:00:00+00', '2026-01-01 12:00:30+00', '2026-12-03 11:04:05.473949+00', '4be70fa', '{"seed": 0, "model_id": "m1", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (2, 'none', 2, 1, 9.5, 0.015625, 0.96875, 16.25, 16.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:01:00+00', '2026-01-01 12:01:30+00', '2026-12-03 11:04:05.508581+00', '4be70fa', '{"seed": 0, "model_id": "m1", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (5, 'streamkv', 1, 0.25, 9.5, 0.015625, 0.96875, 4.25, 4.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:02:00+00', '2026-01-01 12:02:30+00', '2026-12-03 11:04:05.524876+00', '4be70fa', '{"seed": 0, "model_id": "m1", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (6, 'streamkv', 3, 0.5, 9.5, 0.015625, 0.96875, 4.25, 4.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:03:00+00', '2026-01-01 12:03:30+00', '2026-12-03 11:04:05.542435+00', '4be70fa', '{"seed": 0, "model_id": "m1", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (3, 'none', 4, 0.75, 9.5, 0.015625, 0.96875, 16.25, 16.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:04:00+00', '2026-01-01 12:04:30+00', '2026-12-03 11:04:05.561062+00', '4be70fa', '{"seed": 0, "model_id": "m1", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (7, 'streamkv', 4, 0.625, 9.5, 0.015625, 0.96875, 4.25, 4.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:05:00+00', '2026-01-01 12:05:30+00', '2026-12-03 11:04:05.586709+00', '4be70fa', '{"seed": 0, "model_id": "m1", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (9, 'kivi', 2, 0.375, 9.5, 0.015625, 0.96875, 2.25, 2.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:06:00+00', '2026-01-01 12:06:30+00', '2026-12-03 11:04:05.610915+00', '4be70fa', '{"seed": 0, "model_id": "m1", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (13, 'none', 8, 0.5, 9.5, 0.015625, 0.96875, 16.25, 16.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:07:00+00', '2026-01-01 12:07:30+00', '2026-12-03 11:04:05.625802+00', '4be70fa', '{"seed": 0, "model_id": "m2", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (15, 'streamkv', 8, 0.4375, 9.5, 0.015625, 0.96875, 4.25, 4.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:08:00+00', '2026-01-01 12:08:30+00', '2026-12-03 11:04:05.643695+00', '4be70fa', '{"seed": 0, "model_id": "m2", "git_commit": "4be70fa"}');
INSERT INTO public.unit_summaries VALUES (16, 'streamkv', 8, 0.125, 9.5, 0.015625, 0.96875, 4.25, 4.25, 1000000, 4000000, 4, 0.03125, 1234.5, 45.5, 1073741824, 'worker-0', 'cpu', '2026-01-01 12:09:00+00', '2026-01-01 12:09:30+00', '2026-12-03 11:04:05.659111+00', '4be70fa', '{"seed": 0, "model_id": "m2", "git_commit": "4be70fa"}');


--
-- Data for Name: units; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.units VALUES (4, 'sw-a', 'm1', 'b977c368f583', 'sum', '1/2', 'pending', 0, NULL, NULL, NULL, NULL, NULL);
INSERT INTO public.units VALUES (14, 'sw-b', 'm2', 'b977c368f583', 'sum', '0/1', 'pending', 0, NULL, NULL, NULL, NULL, NULL);
INSERT INTO public.units VALUES (1, 'sw-a', 'm1', 'b977c368f583', 'qa', '0/2', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:00:00+00', '2026-01-01 12:00:30+00', NULL);
INSERT INTO public.units VALUES (2, 'sw-a', 'm1', 'b977c368f583', 'qa', '1/2', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:01:00+00', '2026-01-01 12:01:30+00', NULL);
INSERT INTO public.units VALUES (5, 'sw-a', 'm1', '1ae84e94358a', 'qa', '0/2', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:02:00+00', '2026-01-01 12:02:30+00', NULL);
INSERT INTO public.units VALUES (6, 'sw-a', 'm1', '1ae84e94358a', 'qa', '1/2', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:03:00+00', '2026-01-01 12:03:30+00', NULL);
INSERT INTO public.units VALUES (3, 'sw-a', 'm1', 'b977c368f583', 'sum', '0/2', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:04:00+00', '2026-01-01 12:04:30+00', NULL);
INSERT INTO public.units VALUES (7, 'sw-a', 'm1', '1ae84e94358a', 'sum', '0/2', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:05:00+00', '2026-01-01 12:05:30+00', NULL);
INSERT INTO public.units VALUES (9, 'sw-a', 'm1', '74841f98e422', 'qa', '0/2', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:06:00+00', '2026-01-01 12:06:30+00', NULL);
INSERT INTO public.units VALUES (13, 'sw-b', 'm2', 'b977c368f583', 'qa', '0/1', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:07:00+00', '2026-01-01 12:07:30+00', NULL);
INSERT INTO public.units VALUES (15, 'sw-b', 'm2', 'a2886d8a6e08', 'qa', '0/1', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:08:00+00', '2026-01-01 12:08:30+00', NULL);
INSERT INTO public.units VALUES (16, 'sw-b', 'm2', 'a2886d8a6e08', 'sum', '0/1', 'done', 1, 'worker-0', 'cpu', '2026-01-01 12:09:00+00', '2026-01-01 12:09:30+00', NULL);
INSERT INTO public.units VALUES (10, 'sw-a', 'm1', '74841f98e422', 'qa', '1/2', 'failed', 1, 'worker-1', 'cuda:0', '2026-12-03 11:04:05.663507+00', '2026-12-03 11:04:05.669077+00', 'RuntimeError: CUDA out of memory');
INSERT INTO public.units VALUES (11, 'sw-a', 'm1', '74841f98e422', 'sum', '0/2', 'pending', 1, 'worker-1', 'cuda:0', '2026-12-03 11:04:05.676454+00', '2026-12-03 11:04:05.680304+00', 'worker lost');
INSERT INTO public.units VALUES (12, 'sw-a', 'm1', '74841f98e422', 'sum', '1/2', 'running', 1, 'worker-1', 'cuda:0', '2026-12-03 11:04:05.684367+00', NULL, NULL);
INSERT INTO public.units VALUES (8, 'sw-a', 'm1', '1ae84e94358a', 'sum', '1/2', 'skipped', 0, NULL, NULL, NULL, '2026-12-03 11:04:05.69097+00', 'model too large');


--
-- Name: units_unit_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.units_unit_id_seq', 16, true);


--
-- Name: alembic_version alembic_version_pkc; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.alembic_version
    ADD CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num);


--
-- Name: blobs pk_blobs; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.blobs
    ADD CONSTRAINT pk_blobs PRIMARY KEY (unit_id, kind);


--
-- Name: configs pk_configs; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.configs
    ADD CONSTRAINT pk_configs PRIMARY KEY (config_id);


--
-- Name: results pk_results; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.results
    ADD CONSTRAINT pk_results PRIMARY KEY (unit_id, metric);


--
-- Name: samples pk_samples; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.samples
    ADD CONSTRAINT pk_samples PRIMARY KEY (unit_id, sample_id);


--
-- Name: sweeps pk_sweeps; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.sweeps
    ADD CONSTRAINT pk_sweeps PRIMARY KEY (sweep_id);


--
-- Name: unit_summaries pk_unit_summaries; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.unit_summaries
    ADD CONSTRAINT pk_unit_summaries PRIMARY KEY (unit_id);


--
-- Name: units pk_units; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.units
    ADD CONSTRAINT pk_units PRIMARY KEY (unit_id);


--
-- Name: units uq_units_sweep_id_model_id_config_id_task_shard; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.units
    ADD CONSTRAINT uq_units_sweep_id_model_id_config_id_task_shard UNIQUE (sweep_id, model_id, config_id, task, shard);


--
-- Name: ix_blobs_sha256; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_blobs_sha256 ON public.blobs USING btree (sha256);


--
-- Name: ix_units_finished_at; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_units_finished_at ON public.units USING btree (finished_at);


--
-- Name: ix_units_sweep_id_status; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_units_sweep_id_status ON public.units USING btree (sweep_id, status);


--
-- Name: blobs fk_blobs_unit_id_units; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.blobs
    ADD CONSTRAINT fk_blobs_unit_id_units FOREIGN KEY (unit_id) REFERENCES public.units(unit_id) ON DELETE CASCADE;


--
-- Name: results fk_results_unit_id_units; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.results
    ADD CONSTRAINT fk_results_unit_id_units FOREIGN KEY (unit_id) REFERENCES public.units(unit_id) ON DELETE CASCADE;


--
-- Name: samples fk_samples_unit_id_units; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.samples
    ADD CONSTRAINT fk_samples_unit_id_units FOREIGN KEY (unit_id) REFERENCES public.units(unit_id) ON DELETE CASCADE;


--
-- Name: unit_summaries fk_unit_summaries_unit_id_units; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.unit_summaries
    ADD CONSTRAINT fk_unit_summaries_unit_id_units FOREIGN KEY (unit_id) REFERENCES public.units(unit_id) ON DELETE CASCADE;


--
-- Name: units fk_units_config_id_configs; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.units
    ADD CONSTRAINT fk_units_config_id_configs FOREIGN KEY (config_id) REFERENCES public.configs(config_id);


--
-- Name: units fk_units_sweep_id_sweeps; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.units
    ADD CONSTRAINT fk_units_sweep_id_sweeps FOREIGN KEY (sweep_id) REFERENCES public.sweeps(sweep_id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--

\unrestrict HqVd2IPtfNBkBIZ0QO7RiBQnrq6HOFex253WBJavejlq4CzLdh3CJHkSye3duLe

