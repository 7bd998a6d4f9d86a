DROP TABLE auth_assertion;
DROP TABLE auth_refresh;
DROP TABLE auth_session;
DROP TABLE auth_client;
DROP TABLE auth_user;
