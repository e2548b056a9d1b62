-- Second database on the same server: prediction tables for analysts and applications, apart from
-- Airflow's metadata. Runs once, when the postgres volume is first created.
CREATE DATABASE lockstep;
