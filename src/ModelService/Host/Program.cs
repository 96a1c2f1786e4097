using InterpMesh.ModelService.Hosting;

// Settings: appsettings.json, environment (ModelService__ModelPath=…), or command line
// (--ModelService:ModelPath=…). See ModelServiceOptions.
var app = ModelServiceApp.Build(args);
app.Run();
