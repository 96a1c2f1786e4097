using InterpMesh.Gateway.Hosting;

// Settings: appsettings.json, environment (Gateway__ArtifactsPath=…), or command line. See GatewayOptions.
var app = GatewayApp.Build(args);
app.Run();
