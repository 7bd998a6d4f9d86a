DROP TABLE ix_token;
DROP TABLE resource_version;
